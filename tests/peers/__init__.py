"""Real rate limiters that bulksend's tests send to, on loopback, none of them written here.

* ``flask_limited``: a Flask app serving MaxTraffic's send endpoint, limited by Flask-Limiter (the
  ``limits`` library computes its counts and headers), run by werkzeug's threaded server in a
  child process that logs every answer to a JSON Lines file.
* ``nginx``: a real nginx ``limit_req`` gateway in front of bulksend's sandbox (no limit of its
  own), in a child process with its configuration and logs in a temporary directory.
* ``measure``: reads those logs and computes what the scheduler promises: utilisation of the
  limiter's true rate after convergence, the share of refusals, requests in any span.
* ``process``: starting and stopping the child processes.
"""
