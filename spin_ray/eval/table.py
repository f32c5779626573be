"""The evaluation table in the paper's layout: one block per dataset, a row per method, the columns that apply."""

from __future__ import annotations

import math

from spin_ray.eval.result import EvalResult

# (summary key, header, format): SPIN's Table 1 (MPJPE, reconstruction error), 3DPW's PVE, Table 4 (3DHP
# PCK/AUC without and with rigid alignment) and Table 2 (LSP foreground and part segmentation).
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("mpjpe_mm", "MPJPE", ".1f"), ("pa_mpjpe_mm", "PA-MPJPE", ".1f"), ("pve_mm", "PVE", ".1f"),
    ("pck_pct", "PCK", ".1f"), ("auc_pct", "AUC", ".1f"), ("pa_pck_pct", "PA-PCK", ".1f"),
    ("pa_auc_pct", "PA-AUC", ".1f"), ("fb_accuracy_pct", "FB acc", ".2f"), ("fb_f1", "FB F1", ".3f"),
    ("parts_accuracy_pct", "Parts acc", ".2f"), ("parts_f1", "Parts F1", ".3f"),
)
_LEGEND = {
    "mpjpe_mm": "MPJPE, PA-MPJPE (after Procrustes alignment), PVE in mm on SPIN's 14 joints, hip-centred",
    "pck_pct": "PCK (150 mm) and AUC (0-150 mm) in % on the 17 3DHP joints, pelvis-centred; PA- after rigid alignment",
    "fb_accuracy_pct": "FB: foreground/background, Parts: 6 parts + background; accuracy in %, F1 the macro mean",
}


def _applies(summaries: list[dict], key: str) -> bool:
    return any(isinstance(s.get(key), float) and math.isfinite(s[key]) for s in summaries)


def format_table(results: list[EvalResult]) -> str:
    """Plain-text tables of the results' means, one per dataset, with only the metrics its truth allows."""
    lines: list[str] = []
    datasets = list(dict.fromkeys(r.dataset for r in results))
    for dataset in datasets:
        summaries = [r.summary() for r in results if r.dataset == dataset]
        columns = [c for c in COLUMNS if _applies(summaries, c[0])]
        first = summaries[0]  # every method sees the same rows
        lines.append(f"{dataset}: {first['samples']} samples ({first['samples_3d']} with 3D truth, "
                     f"{first['pve_samples']} with SMPL, {first['segmentation_samples']} with masks)")
        header = f"{'method':<12}" + "".join(f" {title:>9}" for _, title, _ in columns)
        lines += [header, "-" * len(header)]
        for s in summaries:
            lines.append(f"{s['name']:<12}" + "".join(f" {format(s[key], fmt):>9}" for key, _, fmt in columns))
        shown = {key for key, _, _ in columns}
        lines += [f"  {text}" for key, text in _LEGEND.items() if key in shown]
        joints = "the H36M regressor" if first["joints"] == "h36m" else "the body model's own keypoints (open model)"
        lines.append(f"  joints from {joints}")
        if first["neutral_stand_in"]:
            lines.append(f"  {first['neutral_stand_in']} row(s) of gender m/f got their truth from the neutral model: "
                         "set body.model_path_male and body.model_path_female for 3DPW's protocol")
        if first["skipped"]:
            lines.append(f"  {first['skipped']} row(s) of {dataset} skipped as bad samples (data.bad_samples: skip; "
                         "see the warnings)")
        lines.append("")
    return "\n".join(lines).rstrip()
