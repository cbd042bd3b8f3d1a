"""``deepscope dream MODEL IMAGE --layer NAME --octaves 4``: Deep Dream on a photo."""

from __future__ import annotations

from pathlib import Path

from deepscope.commands.common import (add_model_argument, add_run_options, check_out_folder, existing_path,
                                       float_above, model_from_args, nonnegative_int, safe_name, positive_float,
                                       positive_int, seed, wrote)
from deepscope.fileio import Outputs


def register(subparsers) -> None:
    parser = subparsers.add_parser("dream", help="Deep Dream: amplify what a layer sees in a photo",
                                   description="Gradient ascent on a layer's mean squared activation, with octaves "
                                   "and random-roll jitter (Mordvintsev et al. 2015).")
    add_model_argument(parser, optional=False)
    parser.add_argument("image", metavar="IMAGE", type=existing_path, help="the photo to dream on")
    parser.add_argument("--layer", required=True, help="layer name (see `deepscope layers MODEL`)")
    parser.add_argument("--octaves", type=positive_int, default=4, help="number of scales (default 4)")
    parser.add_argument("--octave-scale", type=float_above(1), default=1.4,
                        help="scale between octaves, above 1 (default 1.4)")
    parser.add_argument("--steps", type=positive_int, default=10, help="steps per octave (default 10)")
    parser.add_argument("--lr", type=positive_float, default=0.01, help="step size in [0, 1] pixels (default 0.01)")
    parser.add_argument("--jitter", type=nonnegative_int, default=32, help="largest random roll in pixels (default 32)")
    parser.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    add_run_options(parser, out="out/dream")
    parser.set_defaults(run=run)


def run(args) -> int:
    import torch

    from deepscope.images import load_image
    from deepscope.optimize import deep_dream
    from deepscope.probe import get_layer
    from deepscope.render.common import save_array_png, save_figure, to_image_array
    from deepscope.render.neurons import image_grid_figure

    out = check_out_folder(args)
    photo = load_image(args.image)  # an unreadable photo is refused before the model is loaded
    stem = f"dream_{safe_name(Path(args.image).stem)}_{safe_name(args.layer)}"
    image_path, figure_path = out / f"{stem}.png", out / f"{stem}_compare.png"
    with Outputs([image_path, figure_path], overwrite=args.force) as outputs:
        loaded = model_from_args(args)
        get_layer(loaded.model, args.layer)
        photo = loaded.preprocess.crop(photo)
        dream = deep_dream(loaded.model, photo, args.layer, loaded.preprocess, octaves=args.octaves,
                           octave_scale=args.octave_scale, steps=args.steps, lr=args.lr, jitter=args.jitter,
                           seed=args.seed, progress=not args.quiet)[0].cpu()
        save_array_png(to_image_array(dream), image_path)
        save_figure(image_grid_figure(torch.stack([photo, dream]), ["photo", f"Deep Dream, {args.layer}"],
                                      f"{loaded.name}: {args.octaves} octaves x {args.steps} steps"), figure_path)
    wrote(outputs.written)
    return 0

