"""``deepscope serve [MODEL] [IMAGES]``: explore a model in the browser (see :mod:`deepscope.serve`)."""

from __future__ import annotations

from deepscope.commands.common import add_images_argument, add_model_argument, positive_int
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
                        help="read photos, features and top activations from a results store (not available yet)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default 127.0.0.1; any other address requires a token)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    parser.add_argument("--cache-mb", type=positive_int, default=256, metavar="MB",
                        help="memory for computed maps and views, least recently used first out (default 256)")
    parser.set_defaults(run=run)


def run(args) -> int:
    import torch

    from deepscope.serve.explorer import Explorer, ServeSettings
    from deepscope.serve.server import run_server

    if args.store is not None:
        raise DeepscopeError("--store: reading a results store needs the dataset jobs (issue 14), which this "
                             "version does not have yet; serve a folder of photos: deepscope serve MODEL FOLDER.")
    if not 0 <= args.port <= 65535:
        raise DeepscopeError(f"--port must be between 0 and 65535, got {args.port}.")
    if args.images == "builtin":
        from deepscope.sample_images import builtin_images

        images = builtin_images()
    else:
        from deepscope.images import scan_images

        images = scan_images(args.images)  # labels from class folders once the model's classes are known
    settings = ServeSettings(cache_megabytes=float(args.cache_mb))
    explorer = Explorer(args.model, images, settings, device=args.device, pretrained=not args.random_weights,
                        worker_setup=lambda: torch.set_flush_denormal(True))
    run_server(explorer, args.host, args.port)
    return 0
