"""``calmcap serve``: the model behind a JSON API under ``/v1`` and a web page at ``/`` (issue #14).

One model copy, owned by one thread; concurrent requests are micro-batched through it from a
bounded queue, and their videos are decoded beside it (as batch captioning does). docs/SERVE.md
describes the API. One module per idea:

* :mod:`~calmcap.serve.settings`: the limits and sizes a server runs with (:class:`ServeSettings`);
* :mod:`~calmcap.serve.uploads`: a multipart upload streamed into a temporary file, bounded in size and time;
* :mod:`~calmcap.serve.forms`: the fields a request may send, checked as the CLI checks its options;
* :mod:`~calmcap.serve.batcher`: the model's thread, its bounded queue and the micro-batches;
* :mod:`~calmcap.serve.frames`: JPEGs of the frames the model saw, and one frame per indexed video;
* :mod:`~calmcap.serve.schemas`: what the endpoints return (their OpenAPI schemas);
* :mod:`~calmcap.serve.state`: what a running server holds (model, index, queue, decode pool) and its start and stop;
* :mod:`~calmcap.serve.app`: the FastAPI application, its routes and the page (``static/``).

Like the CLI, this package sits on top of :mod:`calmcap.pipeline`; nothing in the library imports
it. Importing it is cheap: FastAPI, torch and the decoders are imported by the modules that use
them, and only :mod:`calmcap.serve.app` needs FastAPI.
"""
