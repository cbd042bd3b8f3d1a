"""``deepscope serve [MODEL] [IMAGES]``: explore a model in the browser (see :mod:`deepscope.serve`)."""

from __future__ import annotations

from deepscope.commands.common import add_images_argument, add_model_argument, images_from_args, port, positive_int
from deepscope.errors import DeepscopeError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="an interactive explorer in the browser: maps of any class, neurons, feature space, trust",
        description="Start a local web application that explains the model on IMAGES on demand: pick or drop a "
                    "photo, click a class, compare every method; neurons, the feature space and the trust table. "
                    "It listens on 127.0.0.1 unless --host says otherwise (then it asks for a token).")
    add_model_argument(parser)
    add_images_argument(parser)
    parser.add_argument("--store", default=None, metavar="DIR",
                        help="serve the photos of a results store's newest complete job (`deepscope classify/"
                        "features/... --store DIR`) when IMAGES is left out")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default 127.0.0.1; any other address requires a token)")
    parser.add_argument("--port", type=port, default=8000, help="port (default 8000; 0: any free port)")
    parser.add_argument("--cache-mb", type=positive_int, default=256, metavar="MB",
                        help="memory for computed maps and views, least recently used first out (default 256)")
    parser.set_defaults(run=run)


def run(args) -> int:
    import torch

    from deepscope.serve.explorer import Explorer, ServeSettings
    from deepscope.serve.server import run_server

    if args.store is not None and args.images is None:
        images = store_photos(args.store)
    else:
        images = images_from_args(args)  # labels from class folders once the model's classes are known
    settings = ServeSettings(cache_megabytes=float(args.cache_mb))
    explorer = Explorer(args.model, images, settings, device=args.device, pretrained=not args.random_weights,
                        worker_setup=lambda: torch.set_flush_denormal(True))
    run_server(explorer, args.host, args.port)
    return 0


def store_photos(path: str):
    """The photos of the newest complete job of the results store at ``path``."""
    from deepscope.jobs import open_store

    job = open_store(path).newest()
    if job is None:
        raise DeepscopeError(f"--store {path}: no complete job to take photos from; run `deepscope classify MODEL "
                             "IMAGES --store DIR` first, or give IMAGES.")
    return job.image_set()
