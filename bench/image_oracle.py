"""How good can a label-driven image prediction be? The image prior composed from the TRUE future
label, against copy-last, on the test patients' future cases.

The image head predicts the follow-up as a label-driven change of a base image
(``mtlgen.models.priors.class_mean_change``) plus a learned residual. This bench removes the
label error: it composes the change from the *true* target label, with the base either the
reference visit's image (copy-last) or the stable-tissue mean of the context visits
(``stable_tissue_mean``), at several point spreads (on the stable-tissue base also with the
blurred change kept to the voxels whose label changes), and scores every variant with the
evaluation's own changing-region image MAE (``mtlgen.evaluate.scores.case_metrics``). What stays
is the part no label can explain: scan noise, the follow-up's own intensity drift, tissue moved
by mass effect and atrophy, and partial-volume edges. One more variant keeps the model's own
label rule (``priors.sized_label`` from the reference lesion) but gives it the TRUE volumes:
the image a perfect volume forecast would reach. With ``--checkpoint`` a trained model is
scored twice: as it predicts, and with its future label sized to the TRUE volumes
(``future_volume_ml``), so the distance its volume forecast costs is measured on its own masks
and image. Ratios are printed over all cases, per true progression status and per number of
context visits (a single visit has no trajectory to extrapolate).

Example: python bench/image_oracle.py --blur 0.5 0.75 1.0 --group all
         python bench/image_oracle.py --split-seed 1 --checkpoint DIR/mtl_seed1/best
           (DIR: the --out of bench/mtl_vs_single.py --split-per-seed)
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("-p", "--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--blur", type=float, nargs="+", default=[0.75], help="sigma, voxels")
    parser.add_argument(
        "--group",
        default="test",
        choices=["train", "val", "test", "all"],
        help="patients whose future cases are scored (nothing is trained: 'all' is fair)",
    )
    parser.add_argument(
        "--split-seed",
        type=int,
        default=None,
        help="draw the patient split with this seed, as bench/mtl_vs_single.py --split-per-seed"
        " does (default: the params split file)",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="also score this multi-task checkpoint (a best/ or last/ folder), as it predicts and"
        " sized to the true volumes",
    )
    args = parser.parse_args()

    import torch

    from mtlgen.config import load_config
    from mtlgen.data.dataset import encode_context
    from mtlgen.data.splits import load_split, make_split
    from mtlgen.evaluate.cases import case_specs, case_truth
    from mtlgen.evaluate.scores import case_metrics
    from mtlgen.inference.prediction import Prediction
    from mtlgen.io.series import load_visit
    from mtlgen.models.labels import class_channels
    from mtlgen.models.mtl_net import TASKS, MultiTaskNet, reference_image
    from mtlgen.models.priors import class_mean_change, sized_label, stable_tissue_mean
    from mtlgen.progression import STATUSES, lesion_volumes_ml
    from mtlgen.registry.series import load_series

    params = load_config(args.params)
    everyone = load_series(params.registry.url, params.registry.sqlite_timeout_s)
    data = params.data
    split = (
        load_split(data.split_file)
        if args.split_seed is None or args.split_seed == params.seed
        else make_split(
            [s.patient for s in everyone], data.val_fraction, data.test_fraction, args.split_seed
        )
    )
    groups = ("train", "val", "test") if args.group == "all" else (args.group,)
    chosen = {p for g in groups for p in getattr(split, g)}
    series = [s for s in everyone if s.patient in chosen]
    contrasts = list(params.data.contrasts)
    model = None
    if args.checkpoint is not None:
        model = MultiTaskNet.from_pretrained(args.checkpoint)
        if model.tasks != TASKS:
            raise SystemExit(f"{args.checkpoint}: not a multi-task checkpoint")
        contrasts = list(model.contrasts)
    fallback = torch.full((3, len(contrasts)), 0.5)

    def onehot(label) -> torch.Tensor:
        return class_channels(torch.from_numpy(label.astype("int64"))[None], 1)

    scores: dict[str, dict[str, list[float]]] = {}
    for patient in series:
        for kind, context_idx, target_idx in case_specs(
            patient, params.data.max_context, params.data.reconstruction
        ):
            if kind != "future":
                continue
            context = [load_visit(patient.visits[i]) for i in context_idx]
            truth = case_truth(
                patient.patient,
                kind,
                context,
                load_visit(patient.visits[target_idx]),
                params.evaluate,
                params.progression,
            )
            if truth.change is None:
                continue
            batch = {
                k: v[None]
                for k, v in encode_context(
                    context, truth.target.days, contrasts, params.data.max_context
                ).items()
            }
            reference = reference_image(
                batch["images"], batch["contrast_present"], batch["ref_slot"]
            )
            known = (batch["mask_present"] & batch["visit_valid"]).float()
            probs = class_channels(batch["masks"], 2)
            probs = probs * known.reshape(*known.shape, 1, 1, 1, 1)
            stable = stable_tissue_mean(
                batch["images"],
                batch["contrast_present"],
                probs,
                probs[:, int(batch["ref_slot"][0])],
                batch["visit_valid"],
                reference,
            )
            ref_oh, true_oh = onehot(truth.reference.label), onehot(truth.target.label)
            relabelled = torch.from_numpy(truth.reference.label != truth.target.label)[None, None]
            variants = {"copy-last": reference, "stable-tissue mean": stable}
            # the model's own label rule (reference lesion, then nearness) given the TRUE
            # volumes: what a perfect volume forecast would give
            vox = batch["voxel_ml"][None]
            true_ml = torch.tensor([lesion_volumes_ml(truth.target.label, float(vox))])
            ref_label = torch.from_numpy(truth.reference.label.astype("int64"))[None]
            sized = sized_label(ref_oh, true_ml, vox, ref_label)[0]
            sized_oh = onehot(sized.numpy())
            for sigma in args.blur:
                s = torch.tensor(sigma)
                variants[f"true label on reference, blur {sigma}"] = class_mean_change(
                    reference, ref_oh, true_oh, fallback, s
                )
                changed = class_mean_change(stable, ref_oh, true_oh, fallback, s)
                variants[f"true label on stable-tissue mean, blur {sigma}"] = changed
                variants[f"  same, only relabelled voxels, blur {sigma}"] = torch.where(
                    relabelled, changed, stable
                )
                variants[f"true volumes sized from the reference, blur {sigma}"] = (
                    class_mean_change(stable, ref_oh, sized_oh, fallback, s)
                )
            if model is not None:
                with torch.no_grad():
                    variants["model, its own volume forecast"] = model(batch)["image"]
                    at_truth = model({**batch, "future_volume_ml": true_ml})["image"]
                    variants["model, sized to the true volumes"] = at_truth
            # as the predictors answer: the contrasts some context visit has
            seen = batch["contrast_present"][0].any(dim=0).tolist()
            case_groups = ("all", truth.status, f"{len(context)} visit" + "s" * (len(context) > 1))
            for name, image in variants.items():
                images = {c: image[0, i].numpy() for i, c in enumerate(contrasts) if seen[i]}
                pred = Prediction(images, truth.target.label, truth.volume_ml, "stable")
                mae = case_metrics(pred, truth)["image_mae_change"]
                for group in case_groups:
                    scores.setdefault(name, {}).setdefault(group, []).append(mae)
    copy = scores["copy-last"]
    columns = [g for g in ("all", *STATUSES) if g in copy]
    columns += sorted(g for g in copy if g not in columns)
    counts = ", ".join(f"{len(copy[g])} {g}" for g in columns[1:])
    print(f"{len(copy['all'])} future cases of the {args.group} patients ({counts})")
    print(
        f"{'image':<52} {'MAE change':>10}   / copy-last: " + " ".join(f"{g:>11}" for g in columns)
    )
    for name, by_group in scores.items():
        ratios = " ".join(
            f"{statistics.fmean(by_group[g]) / statistics.fmean(copy[g]):>11.3f}" for g in columns
        )
        print(f"{name:<52} {statistics.fmean(by_group['all']):>10.4f}{'':>14}{ratios}")


if __name__ == "__main__":
    main()
