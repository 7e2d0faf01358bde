"""Backend options from --option pairs and config files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from geoseg.backend import NoOptions
from geoseg.config import build_options
from geoseg.errors import InputFileError, OptionError


@dataclass(frozen=True)
class WaterOptions:
    index: Literal["ndwi", "mndwi", "ndvi"] = "ndwi"
    threshold: Literal["otsu"] | float = "otsu"
    min_size: int = 0
    fill_holes: bool = False
    hue: tuple[float, float] = (0.5, 0.7)
    classes: tuple[str, ...] = ("background", "water")
    weights: Path | None = None
    label: str = "water"

    def __post_init__(self) -> None:
        if self.min_size < 0:
            raise ValueError(f"min_size must be >= 0, got {self.min_size}")
        if self.hue[0] > self.hue[1]:
            raise ValueError("lower bound above upper bound")


def test_pairs_are_converted_by_field_type():
    options = build_options(
        WaterOptions,
        [
            "index=mndwi",
            "threshold=-0.1",
            "min-size=40",
            "fill_holes=yes",
            "hue=0.4, 0.6",
            "classes=land,water,cloud",
            "weights=none",
            "label=42",
        ],
    )
    assert options == WaterOptions(
        "mndwi", -0.1, 40, True, (0.4, 0.6), ("land", "water", "cloud"), None, "42"
    )
    assert build_options(WaterOptions, ["threshold=otsu", "fill_holes=0"]).threshold == "otsu"
    assert build_options(WaterOptions, ["weights=~/w"]).weights == Path.home() / "w"


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("threshold=high", "--option threshold: must be one of 'otsu' or a number, got 'high'"),
        ("min_size=4.5", "--option min_size: must be an integer, got '4.5'"),
        ("fill_holes=maybe", "--option fill_holes: must be true or false"),
        ("hue=0.5", "--option hue: must be 2 comma-separated values (number, number)"),
        ("index=ndbi", "--option index: must be one of 'ndwi', 'mndwi', 'ndvi'"),
        ("min_size=-3", "invalid option: min_size must be >= 0, got -3"),
        ("hue=0.9,0.1", "invalid option hue: lower bound above upper bound"),
        ("tresh=1", "unknown option 'tresh' (in --option tresh=1); valid options: index, "),
        ("threshold", "--option 'threshold' must be KEY=VALUE"),
    ],
)
def test_bad_pairs_name_the_option(pair, message):
    with pytest.raises(OptionError) as caught:
        build_options(WaterOptions, [pair])
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_config_file_then_pairs(tmp_path):
    yaml_file = tmp_path / "water.yaml"
    yaml_file.write_text("options:\n  threshold: 0.2\n  min_size: 10\n  hue: [0.3, 0.8]\n")
    options = build_options(WaterOptions, ["min_size=20"], yaml_file)
    assert (options.threshold, options.min_size, options.hue) == (0.2, 20, (0.3, 0.8))

    json_file = tmp_path / "water.json"
    json_file.write_text(json.dumps({"index": "ndvi", "fill_holes": True}))
    options = build_options(WaterOptions, [], json_file)
    assert (options.index, options.fill_holes) == ("ndvi", True)


def test_bad_config_files(tmp_path):
    bad_value = tmp_path / "bad.yaml"
    bad_value.write_text("min_size: lots\n")
    with pytest.raises(OptionError, match=r"bad.yaml: option min_size: must be an integer"):
        build_options(WaterOptions, [], bad_value)

    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"colour": "blue"}')
    with pytest.raises(OptionError, match=r"unknown option 'colour' \(in .*unknown.json\)"):
        build_options(WaterOptions, [], unknown)

    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- 1\n- 2\n")
    with pytest.raises(InputFileError, match="must hold a mapping"):
        build_options(WaterOptions, [], not_mapping)

    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    with pytest.raises(InputFileError, match="broken.json: not valid YAML/JSON"):
        build_options(WaterOptions, [], broken)

    with pytest.raises(InputFileError, match="config file not found"):
        build_options(WaterOptions, [], tmp_path / "missing.yaml")


def test_backend_without_options_rejects_any(tmp_path):
    assert build_options(NoOptions, []) == NoOptions()
    with pytest.raises(OptionError, match="it takes no options"):
        build_options(NoOptions, ["a=1"], owner="backend 'plain'")


def test_options_explain_themselves_and_errors_name_the_backend():
    from geoseg.config import describe_options, option
    from geoseg.training import TrainingOptions

    @dataclass(frozen=True)
    class LakeOptions(TrainingOptions):
        """Options of a lake backend.

        ``depth``: lake depth in metres. ``rate`` / ``steps``: the optimizer's schedule.
        """

        depth: float = 2.0
        rate: float = option(0.1, applies="train")
        steps: int = option(5, applies="train", help="Optimizer steps per chip.")
        cutoff: float = option(0.5, applies="predict", help="Probability of the lake class.")

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.depth <= 0:
                raise ValueError(f"depth must be > 0, got {self.depth}")
            if self.steps < 1:
                raise OptionError(f"option steps must be at least 1, got {self.steps}")

    records = {r["name"]: r for r in describe_options(LakeOptions)}
    assert records["depth"] == {
        "name": "depth", "type": "float", "default": 2.0, "help": "Lake depth in metres.",
        "applies": "both",
    }  # fmt: skip
    assert records["rate"]["help"] == "rate / steps: the optimizer's schedule."
    assert records["rate"]["applies"] == "train"
    assert records["steps"]["help"] == "Optimizer steps per chip."  # metadata wins
    assert records["cutoff"]["applies"] == "predict"
    # The training core's options apply to geoseg train, each with its own help.
    assert records["warmup"]["applies"] == "train"
    assert records["warmup"]["help"].startswith("Fraction of the optimizer steps")
    assert {r["applies"] for r in describe_options(LakeOptions, trains=False)} == {"predict"}
    with pytest.raises(ValueError, match="applies must be one of train, predict, both"):
        option(1, applies="always")

    # One error type, and the backend named, whether __post_init__ raises ValueError or
    # OptionError.
    with pytest.raises(OptionError) as caught:
        build_options(LakeOptions, ["depth=0"], owner="backend 'lake'")
    assert str(caught.value) == "backend 'lake': invalid option: depth must be > 0, got 0.0"
    with pytest.raises(OptionError) as caught:
        build_options(LakeOptions, ["steps=0"], owner="backend 'lake'")
    assert str(caught.value) == "backend 'lake': option steps must be at least 1, got 0"


def test_every_installed_backend_option_explains_itself():
    """geoseg backends NAME prints a help line per option, its own, not a neighbour's."""
    from geoseg.config import describe_options
    from geoseg.plugins import backends

    for name, cls in backends().items():
        records = describe_options(cls.Options, trains=cls.capabilities().trains)
        helps = [r["help"] for r in records]
        assert all(helps), f"backend {name}: options without help: " + ", ".join(
            r["name"] for r in records if not r["help"]
        )
        repeated = {h for h in helps if helps.count(h) > 1}
        assert not repeated, f"backend {name}: options share one help text: {repeated}"
