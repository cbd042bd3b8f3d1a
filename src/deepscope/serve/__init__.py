"""``deepscope serve``: an interactive explorer of a classifier in the browser.

- :mod:`deepscope.serve.explorer`: what is computed (predictions, maps, neurons, feature space, trust table);
- :mod:`deepscope.serve.worker`: the threads that own the model, with a shared queue and a bounded cache;
- :mod:`deepscope.serve.photos`: the served photos by id, and checked uploads;
- :mod:`deepscope.serve.app`: the HTTP API and the page's security (CSP, token, hosts);
- :mod:`deepscope.serve.server`: uvicorn;
- ``static/``: the page (plain HTML, CSS and JavaScript files, no build step, nothing from the network).

>>> from deepscope.serve.explorer import Explorer
>>> from deepscope.serve.server import run_server
>>> run_server(Explorer("default", builtin_images()), "127.0.0.1", 8000)
"""
