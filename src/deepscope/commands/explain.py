"""``deepscope explain MODEL IMAGES``: attribution maps, one panel per image and one grid of images x methods."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from deepscope.catalogue import build_method, get_method, method_names, parse_method_options, parse_methods
from deepscope.commands.common import (add_images_argument, add_job_options, add_method_options, add_model_argument,
                                       add_run_options, check_job_options, check_layer_used, check_out_folder,
                                       images_from_args, model_from_args, positive_int, report_skipped,
                                       run_store_job, safe_name, seed, wrote)
from deepscope.errors import DeepscopeError, ImageError
from deepscope.fileio import Outputs, display_path
from deepscope.images import load_image
from deepscope.probe import batched_forward, model_device
from deepscope.render.attribution import attribution_grid, attribution_panel
from deepscope.render.common import save_figure

DEFAULT_METHODS = "occlusion,gradient,smoothgrad,ig,guided"


def register(subparsers) -> None:
    parser = subparsers.add_parser("explain", help="which pixels drive a prediction: saliency maps per image",
                                   description="Explain each image's prediction (or a chosen class) with attribution "
                                   "methods; writes one panel per image and a grid of images x methods. Images that "
                                   "cannot be read are skipped and named.")
    add_model_argument(parser)
    add_images_argument(parser)
    parser.add_argument("--method", default=DEFAULT_METHODS,
                        help=f"comma-separated methods, or all (default {DEFAULT_METHODS}); "
                        f"available: {', '.join(method_names())}")
    parser.add_argument("--target", default="pred", help="pred (each image's predicted class), a class index, a "
                        "WordNet id or a class name (a name two classes share, like crane, needs the index); with "
                        "--store also label (each photo's folder class) (default pred)")
    parser.add_argument("--layer", default=None, help="the layer whose maps the CAM methods weight "
                        "(see `deepscope layers MODEL`; default: the last convolutional block)")
    parser.add_argument("--limit", type=positive_int, default=None,
                        help="explain at most this many (readable) images (default 16; with --store: all)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of the methods that draw noise (default 0)")
    add_method_options(parser)
    add_run_options(parser, out="explain")
    add_job_options(parser)
    parser.add_argument("--map-size", type=positive_int, default=None, metavar="N",
                        help="with --store: side of the stored maps (default: the model input's)")
    parser.add_argument("--map-dtype", choices=("float16", "float32"), default="float16",
                        help="with --store: number type of the stored maps (default float16)")
    parser.set_defaults(run=run)


def run(args) -> int:
    methods = parse_methods(args.method, "--method")
    options = parse_method_options(args.option, methods)
    check_layer_used(args.layer, methods)
    check_job_options(args)
    if args.store:
        return run_jobs(args, methods, options)
    if args.map_size is not None or args.map_dtype != "float16":
        raise DeepscopeError("--map-size and --map-dtype need --store DIR (they say how maps are stored).")
    args.limit = args.limit or 16
    out = check_out_folder(args)
    images = images_from_args(args)
    photos, skipped = [], list(images.skipped)
    for path in images.paths:  # the first --limit images that can be read
        if len(photos) == args.limit:
            break
        try:
            photos.append((path, load_image(path)))
        except ImageError as error:
            skipped.append((path, str(error).split(": ", 1)[-1]))
    if not photos:
        raise ImageError(f"none of the {len(images)} image(s) in {display_path(images.root)} can be read.")
    paths = [path for path, _ in photos]
    panel_files = [out / f"{i:03d}_{safe_name(Path(p).stem)}.png" for i, p in enumerate(paths)]
    grid_file = out / "grid.png"
    with Outputs([*panel_files, grid_file], overwrite=args.force) as outputs:
        loaded = model_from_args(args)
        target = None if args.target == "pred" else loaded.classes.index(args.target)
        built = {}
        for name in methods:
            offered = get_method(name).offered(layer=args.layer, batch_size=args.batch_size, seed=args.seed)
            built[name] = build_method(name, loaded.model, preprocess=loaded.preprocess, progress=False,
                                       **{**offered, **options.get(name, {})})
        device = model_device(loaded.model)
        inputs = torch.stack([loaded.preprocess(image) for _, image in photos]).to(device)
        if target is None:
            targets = batched_forward(loaded.model, inputs, args.batch_size).argmax(1).tolist()
        else:
            targets = [target] * len(paths)

        maps = {name: [] for name in methods}
        with tqdm(total=len(paths) * len(methods), desc="explain", unit="map", disable=args.quiet) as bar:
            for i in range(len(paths)):
                for name, method in built.items():
                    bar.set_postfix_str(f"{display_path(Path(paths[i]).name)} {name}")
                    maps[name].append(method(inputs[i:i + 1], target=targets[i]).detach().cpu())
                    bar.update()
        maps = {name: torch.cat(found) for name, found in maps.items()}
        displays = {name: method.display for name, method in built.items()}

        pixels = loaded.preprocess.denormalize(inputs).clamp(0, 1).cpu()
        target_names = [loaded.classes.names[t] for t in targets]
        for i, file in enumerate(panel_files):
            figure = attribution_panel(pixels[i], {name: found[i:i + 1] for name, found in maps.items()}, displays,
                                       target_names[i], image_title=Path(paths[i]).name)
            save_figure(figure, file)
        save_figure(attribution_grid(pixels, maps, displays, [Path(p).name for p in paths], target_names), grid_file)
    wrote([grid_file], f" and {len(panel_files)} panel(s) ({', '.join(methods)}; "
          f"target {'predicted class' if target is None else target_names[0]})")
    examined = len(paths) + len(skipped) - len(images.skipped)
    if examined < len(images):
        print(f"explained the first {len(paths)} readable images of {len(images)} (raise --limit for more)")
    report_skipped(skipped)
    return 0


def run_jobs(args, methods: list[str], options: dict) -> int:
    """``--store``: one explain job per method over every photo (or the first ``--limit``), maps kept in the store."""
    from deepscope.jobs import ExplainJob
    from deepscope.jobs.base import freeze

    loaded = model_from_args(args)
    images = images_from_args(args, loaded)
    if args.limit:
        images = images.subset(range(min(args.limit, len(images))))
    target = args.target if args.target in ("pred", "label") else loaded.classes.index(args.target)
    skipped = []
    for name in methods:
        offered = get_method(name).offered(layer=args.layer, batch_size=args.batch_size, seed=args.seed)
        job = ExplainJob(name, freeze({**offered, **options.get(name, {})}), target, args.map_size, args.map_dtype)
        skipped.append(run_store_job(args, job, loaded, images).open().skipped_files())
    report_skipped(*skipped)
    return 0
