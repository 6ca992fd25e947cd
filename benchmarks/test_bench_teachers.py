"""Teacher families: forward time per image per family, and LoRA vs full fine-tuning memory of the
task teachers (Grounding DINO, SAM), on random weights of the released models' shapes."""

from __future__ import annotations

import pytest

FAMILIES = ("dinov3_vit", "dinov3_timm", "dinov3_convnext", "dinov2", "sam", "grounding_dino")


@pytest.fixture(scope="module")
def base_teachers(tmp_path_factory: pytest.TempPathFactory, quick: bool) -> dict[str, str]:
    from dinocache.teacher.tiny import make_tiny_teacher

    d = tmp_path_factory.mktemp("teachers")
    size = "tiny" if quick else "base"
    return {
        f: str(
            make_tiny_teacher(
                d / f, family=f, size=("vits" if size == "base" else "tiny") if f == "dinov3_vit" else size
            )
        )
        for f in FAMILIES
    }


def test_family_forward_time(base_teachers: dict[str, str], results, quick: bool) -> None:
    from dinocache.finetune.bench import family_forward_times

    section = "Teachers: forward time per image per family"
    imgsz = 512
    rows = family_forward_times(base_teachers, imgsz=imgsz, rounds=1 if quick else 3)
    ref = next(r for r in rows if r["family"] == "dinov3_vit")["cpu_s_per_image"]
    results.note(
        section,
        f"Random weights shaped like the released model of each family (dinov3_vit/dinov3_timm ViT-S/16, "
        f"ConvNeXt-T, DINOv2-S/14, SAM ViT-B, Grounding DINO Swin-T), one {imgsz}x{imgsz} image (batch 1) "
        "through extract_feature_map (the family's own resize + normalisation); CPU time "
        "(time.process_time, all threads) median of 3 rounds, families alternated in one process; "
        "ratio = family / dinov3_vit.",
    )
    for r in rows:
        results.add(
            section, **r, cpu_ratio_vs_dinov3_vit=round(r["cpu_s_per_image"] / ref, 2) if ref else None
        )


@pytest.mark.parametrize("family", ["grounding_dino", "sam"])
def test_task_teacher_lora_vs_full(family: str, base_teachers: dict[str, str], results, quick: bool) -> None:
    from dinocache.finetune.bench import task_lora_vs_full

    section = "Teacher fine-tuning: LoRA vs full (task teachers)"
    imgsz = 256
    res = task_lora_vs_full(family, base_teachers[family], imgsz=imgsz, steps=1)
    results.note(
        section,
        "finetune-teachers' own step (Grounding DINO: its detection loss on 2 images at "
        f"{imgsz} px, class names as the prompt; SAM: box prompts on 2 images at its 1024-px input, "
        "BCE + dice), random weights of the released shapes, each variant in a fresh process; memory = CUDA "
        "max allocated, else peak RSS above the loaded model; LoRA on encoder + decoder (the default).",
    )
    for name in ("lora", "full"):
        r = res[name]
        results.add(section, variant=f"{family} {name}", **{k: v for k, v in r.items() if k not in ("mode",)})
    results.add(
        section,
        variant=f"{family} full/lora",
        memory_ratio=res["memory_ratio"],
        time_ratio=res["time_ratio"],
        param_ratio=res["param_ratio"],
    )
