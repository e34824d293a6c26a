"""The network: the one aiohttp session (``transport``), the proxy the environment names
(``proxies``) and one request-with-retry path for everything but the send loop (``fetch``)."""
