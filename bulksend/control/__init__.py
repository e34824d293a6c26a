"""Operating a running send from outside: pause and resume, and send windows.

* ``pause``   -- ``PauseControl``, the one gate the engine consults, and the switches that
  set it (memory, the journal's ``control`` row, a Redis key), plus SIGUSR1/SIGUSR2
* ``windows`` -- send windows (``[send] window``/``timezone``): pure wall-clock math

The design is in ``bulksend.control.pause``'s docstring.
"""
