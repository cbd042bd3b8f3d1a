"""Section "trust": the faithfulness table and the sanity-check figure for every method of the catalogue."""

from __future__ import annotations

from deepscope.cache import expect, expect_keys, make_key
from deepscope.catalogue import COSTS, get_method, method_names
from deepscope.render.evaluation import perturbation_curves_figure, randomization_figure
from deepscope.render.report import data_uri, png_tensor
from deepscope.report.base import CostShare, Figure, Note, ReportContext, Section, Table, cost_share, read_png
from deepscope.trust_table import (TRUST_METRICS, MethodEvaluation, evaluate_methods, format_row, readable_selection,
                                   table_columns)

#: deletion/insertion steps unless --steps says; blocks randomised for the figure; photos in the randomisation
#: check (and the metrics that explain again); photos per class folder scored; photos the other catalogue
#: metrics score (the table's cost grows with each). The costly methods are scored on their share of the
#: photos and mosaics (:data:`deepscope.report.base.COST_SHARES`).
STEPS, CASCADE_STEPS, RANDOMIZATION_IMAGES, PER_CLASS, METRIC_IMAGES = 10, 1, 1, 1, 2


INTRO = ("How faithful each saliency method is: deletion and insertion AUC (Petsiuk et al. 2018), the grid "
         "pointing game (Böhle et al. 2022), the sanity check by cascading model randomisation "
         "(Adebayo et al. 2018), ROAD's gap between removing the least and the most relevant pixels (Rong et al. "
         "2022), average drop and increase in confidence (Chattopadhay et al. 2018), infidelity and "
         "sensitivity-max (Yeh et al. 2019) and eMPRT (Hedström et al. 2023), next to a random and a centred "
         "control map. sensitivity-max and eMPRT explain again, on the randomisation photo.")


def trust_section(ctx: ReportContext) -> Section:
    loaded, settings = ctx.loaded, ctx.settings
    methods = method_names()
    jobs = {name: job for name in methods if (job := ctx.stored_job("evaluate", method=name)) is not None}
    if jobs:
        return _stored_section(ctx, methods, jobs)
    steps = settings.steps or STEPS
    options = {name: ctx.method_options(name) for name in methods}
    per_class = _photos_per_class(ctx)
    shares = {name: cost_share(name) for name in methods}
    parts = [methods, options, per_class, steps, sorted((name, repr(share)) for name, share in shares.items()),
             CASCADE_STEPS, RANDOMIZATION_IMAGES, TRUST_METRICS, METRIC_IMAGES, settings.seed]
    key = make_key("trust", parts, ctx.model_key, ctx.images_key)
    scored = {name: share for name, share in shares.items() if share.trust != 0}
    stored = ctx.cache.get_or_compute("trust", key, lambda: _evaluate(ctx, scored, steps, options, per_class),
                                      _read_trust)
    rows = stored["rows"]
    headers = [header for _, header, _ in table_columns(rows)]
    table = [format_row(row, rows) for row in rows]
    mosaics = sorted({share.mosaics for share in scored.values()}, reverse=True)
    items = [Table(headers, table, f"{loaded.name} on up to {stored['images']} photo(s) (the photos column: methods "
                                   "that cost many passes per map are scored on fewer), "
                                   f"{steps} deletion/insertion steps, {' or '.join(map(str, mosaics))} pointing-game "
                                   f"mosaics, up to {METRIC_IMAGES} photo(s) for ROAD, infidelity and average "
                                   f"drop/increase, {RANDOMIZATION_IMAGES} for the randomisation, sensitivity-max and "
                                   f"eMPRT, seed {settings.seed}; mean ± standard error. random and center are "
                                   "controls: they show chance level.")]
    items += [Note(f"{row['method']}: {row['error']}") for row in rows if row["error"]]
    unscored = [name for name in methods if name not in scored]
    if unscored:
        items.append(Note(f"Not scored here, to keep the report within minutes: {', '.join(unscored)} (a map costs "
                          f"{'; '.join(sorted({COSTS[get_method(name).cost] for name in unscored}))}). "
                          f"`deepscope evaluate MODEL IMAGES --methods {','.join(unscored)}` scores "
                          f"{'it' if len(unscored) == 1 else 'them'}."))
    quick = ", ".join(f"{name} {', '.join(f'{k}={v}' for k, v in opts.items())}" for name, opts in options.items() if opts)
    if quick:
        items.append(Note(f"Quick settings for the costly methods: {quick}. "
                          "`deepscope evaluate MODEL IMAGES --methods all` scores them at their defaults."))
    for name, caption in (("curves", "Deletion (left) and insertion (right) curves: the class probability as the most "
                                     "important pixels are removed or revealed first."),
                          ("randomization", "Sanity check: each method's map on the trained model and after its top "
                                            "block is re-initialised; a faithful map changes.")):
        if name in stored:
            items.append(Figure(data_uri(stored[name].numpy().tobytes(), "image/png"), caption=caption))
    return Section("trust", "Can the maps be trusted?", INTRO, items)


def _stored_section(ctx: ReportContext, methods: list[str], jobs: dict) -> Section:
    """The table from the store's evaluate jobs: every photo's metrics, mean and 95 % confidence interval."""
    from deepscope.jobs.evaluate import METRICS

    rows = []
    for name, job in jobs.items():
        summary = job.summary
        cells = [f"{summary[m]['mean']:.3f} [{summary[m]['ci95_low']:.3f}, {summary[m]['ci95_high']:.3f}]"
                 if summary[m]["n"] > 1 else "n/a" for m in METRICS]
        options = ", ".join(f"{k}={v}" for k, v in job.settings["options"]) or "defaults"
        rows.append([name, *cells, f"{summary['deletion_auc']['n']:,}", f"{job.settings['steps']} steps; {options}"])
    headers = ["method", "deletion AUC (lower is better)", "insertion AUC (higher is better)",
               "rank corr. after top-layer randomisation (lower passes)", "SSIM after top-layer randomisation",
               "photos", "settings"]
    items = [Table(headers, rows, f"{ctx.loaded.name}: every photo's metrics from the store's evaluate jobs; mean "
                                  "[95 % confidence interval]. random and center are controls: they show chance level. "
                                  "The pointing game scores mosaics, not photos: run `deepscope evaluate` without "
                                  "--store for it.")]
    missing = [name for name in methods if name not in jobs]
    if missing:
        items.append(Note(f"No evaluate job in the store for {', '.join(missing)}: run `deepscope evaluate MODEL IMAGES "
                          f"--store DIR --methods {','.join(missing)}`."))
    return Section("trust", "Can the maps be trusted?", INTRO, items)


def _photos_per_class(ctx: ReportContext) -> int:
    """:data:`PER_CLASS` photos of each class folder; of a flat folder, the report's sample size."""
    labelled = any(folder is not None for folder in ctx.images.folders)
    return PER_CLASS if labelled else ctx.settings.max_images


def _evaluate(ctx: ReportContext, shares: dict[str, CostShare], steps: int, options: dict, per_class: int) -> dict:
    """The table of the methods ``shares`` names, each scored on its share of photos and mosaics."""
    loaded, settings = ctx.loaded, ctx.settings
    results = {}
    for share in dict.fromkeys(shares.values()):  # the costly methods score fewer photos and mosaics
        chosen = [name for name, other in shares.items() if other == share]
        found = evaluate_methods(
            loaded, ctx.images, chosen, images_per_class=per_class, max_images=share.trust, mosaics=share.mosaics,
            steps=steps, cascade_steps=CASCADE_STEPS, randomization_images=RANDOMIZATION_IMAGES,
            batch_size=settings.batch_size, seed=settings.seed, method_options=options, photos=ctx.photos,
            metric_images=METRIC_IMAGES, progress=settings.progress)
        results.update((result.method, result) for result in found)
    results = [results[name] for name in shares]
    done = [r for r in results if r.deletion is not None]
    stored = {"rows": [r.row() for r in results], "images": max((len(r.deletion.auc) for r in done), default=0)}
    if done:
        stored["curves"] = png_tensor(perturbation_curves_figure({r.method: (r.deletion, r.insertion) for r in done}))
        first = readable_selection(ctx.images, per_class, settings.seed, ctx.photos).paths[:1]
        pixels = ctx.photos.crops(first)[0]
        stored["randomization"] = png_tensor(randomization_figure({r.method: r.randomization for r in done}, pixels))
    return stored


#: the numbers of a trust table row
ROW_KEYS = tuple(MethodEvaluation("").row())


def _read_trust(stored) -> dict:
    """A cached trust table: ``{"rows": [row, ...], "images": int}`` and optionally the two figures as PNG."""
    expect_keys(stored, ("rows", "images"), "a trust entry")
    expect(isinstance(stored["rows"], list) and all(isinstance(row, dict) and set(ROW_KEYS) <= set(row)
                                                    for row in stored["rows"]), "rows should be table rows")
    expect(isinstance(stored["images"], int), "images should be a count")
    for name in ("curves", "randomization"):
        if name in stored:
            read_png(stored[name])
    return stored
