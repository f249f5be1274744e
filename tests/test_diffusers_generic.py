"""The generic diffusers adapter (`diffusers:<folder>` / `diffusers:<owner>/<repo>`) and `parse_model_args`.

No weights: `AutoPipelineForText2Image.from_pretrained` (and, for the fixed recipes, their pipeline classes'
`from_pretrained`) is replaced by `FakePipeline`, which draws images from the per-seed generators; one test
runs a tiny random SDXL pipeline saved to disk through the real loader.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from baselines import pretrained
from baselines.base import BuildContext
from baselines.pretrained import (
    GENERIC_OPTIONS, RECIPES, DiffusersGenerator, PretrainedGenerator, check_inputs, record_name,
)
from baselines.registry import UnknownNameError, available_models, build, get_entry, model_options, parse_model_args

CTX = BuildContext(None, torch.device("cpu"), Path("unused"), {}, {})


class FakePipeline:
    """What the adapter touches on a diffusers pipeline: components, scheduler, sizes, `to`, and `__call__`.

    `output` picks what `__call__` returns: a float tensor (output_type "pt"), an NHWC array, or PIL images.
    """

    output = "pt"

    def __init__(self, path, **kwargs):
        from diffusers import EulerDiscreteScheduler

        torch.manual_seed(0)
        self.path, self.load_kwargs, self.calls = Path(path), kwargs, []
        self.unet = torch.nn.Linear(2, 2)
        self.text_encoder = torch.nn.Linear(3, 5)
        self.scheduler = EulerDiscreteScheduler()
        self.vae_scale_factor, self.default_sample_size = 2, 6

    @property
    def components(self):
        return {"unet": self.unet, "text_encoder": self.text_encoder, "scheduler": self.scheduler, "tokenizer": None}

    def to(self, device):
        return self

    def set_progress_bar_config(self, **kwargs):
        pass

    def __call__(self, prompt, num_inference_steps, guidance_scale, height, width, generator, output_type, **kwargs):
        self.calls.append(dict(prompt=prompt, steps=num_inference_steps, guidance=guidance_scale, height=height,
                               width=width, output_type=output_type, **kwargs))
        images = torch.stack([torch.rand(3, height, width, generator=g) for g in generator])
        if self.output == "np":
            return SimpleNamespace(images=images.permute(0, 2, 3, 1).numpy())
        if self.output == "pil":
            from PIL import Image

            pixels = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            return SimpleNamespace(images=[Image.fromarray(p) for p in pixels])
        return SimpleNamespace(images=images)


class GuidedPipeline(FakePipeline):
    """A pipeline that decides CFG in a `do_classifier_free_guidance` property, as SD/SDXL/SD3 do."""

    @property
    def do_classifier_free_guidance(self):
        return self._guidance_scale > 1


class InlineGuidedPipeline(FakePipeline):
    """A pipeline that decides CFG inline in its call, as PixArt does."""

    def __call__(self, *args, **kwargs):
        self.do_classifier_free_guidance = kwargs["guidance_scale"] > 1  # the name the adapter looks for
        return super().__call__(*args, **kwargs)


def fake_folder(root: Path, class_name: str = "StableDiffusionXLPipeline") -> Path:
    """A pipeline folder's layout with stand-in files (the fingerprint reads names and sizes only)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    for part in ("unet", "text_encoder"):
        (root / part).mkdir(exist_ok=True)
        (root / part / "diffusion_pytorch_model.safetensors").write_bytes(b"w" * 64)
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text("{}")
    return root


class Loads:
    """A stand-in `from_pretrained`: builds `cls` (FakePipeline or a subclass) and keeps every pipeline made."""

    def __init__(self) -> None:
        self.cls: type[FakePipeline] = FakePipeline
        self.made: list[FakePipeline] = []

    def use(self, cls: type[FakePipeline]) -> None:
        self.cls = cls

    def __call__(self, path, **kwargs) -> FakePipeline:
        self.made.append(self.cls(path, **kwargs))
        return self.made[-1]


@pytest.fixture
def loads(monkeypatch) -> Loads:
    """Every pipeline class's from_pretrained (the auto class's and the fixed recipes') returns a FakePipeline."""
    import diffusers

    fake = Loads()
    for name in {"AutoPipelineForText2Image"} | {r.pipeline for r in RECIPES.values()}:
        monkeypatch.setattr(getattr(diffusers, name), "from_pretrained", staticmethod(fake))
    return fake


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache that this process (and huggingface_hub's precedence) points at."""
    cache = tmp_path / "hf-home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    return cache


def cached_snapshot(cache: Path, repo: str, commit: str, ref: bool = False) -> Path:
    root = cache / f"models--{repo.replace('/', '--')}"
    folder = fake_folder(root / "snapshots" / commit)
    if ref:
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / "main").write_text(commit)
    return folder


# --- names and options


def test_diffusers_names_resolve_to_the_generic_adapter_without_being_listed():
    entry = get_entry("diffusers:/tmp/x")
    assert entry.load() is DiffusersGenerator and entry.options == {"path": "/tmp/x"}
    assert get_entry("diffusers:owner/repo").options == {"path": "owner/repo"}
    assert set(model_options("diffusers:/tmp/x")) == set(GENERIC_OPTIONS)
    assert not any(name.startswith("diffusers:") for name in available_models())
    assert "lcm" in available_models() and "scheduler" in model_options("lcm")
    for bad in ("nope", "diffusers:", "diffusers: "):
        with pytest.raises(UnknownNameError, match=r"available: .*lcm.*; or diffusers:/path/to/pipeline-folder"):
            get_entry(bad)


@pytest.mark.parametrize("text, expected", [
    ("", {}),
    ("  ", {}),
    ("path=/models/sdxl-turbo,dtype=float16,steps=4,guidance=0.0",
     {"path": "/models/sdxl-turbo", "dtype": "float16", "steps": 4, "guidance": 0.0}),
    (" steps = 8 , guidance=7.5 ", {"steps": 8, "guidance": 7.5}),
    ("a=true,b=False,c=-3,d=1e-3,e=.5,f=+2,g=inf,h=1.2.3", {"a": True, "b": False, "c": -3, "d": 1e-3, "e": 0.5,
                                                          "f": 2, "g": "inf", "h": "1.2.3"}),
    ("name='4',other=\"true\",repo=owner/repo@main", {"name": "4", "other": "true", "repo": "owner/repo@main"}),
])
def test_model_args_parse_keys_and_typed_values(text, expected):
    parsed = parse_model_args(text)
    assert parsed == expected
    assert all(type(parsed[k]) is type(v) for k, v in expected.items())


@pytest.mark.parametrize("text, says", [
    ("steps", "'steps' has no '='"),
    ("=4", "'=4' has no key"),
    ("steps=", "'steps=' has no value"),
    ("steps=4,,guidance=1", "'' has no '='"),
    ("steps=4,", "'' has no '='"),
    ("1x=2", "key '1x' is not a name"),
    ("my-key=2", "key 'my-key' is not a name"),
    ("steps=4,guidance=0,steps=5", "key 'steps' is given twice"),
])
def test_bad_model_args_name_the_item_and_the_expected_form(text, says):
    with pytest.raises(ValueError, match=says) as err:
        parse_model_args(text)
    assert "expected key=value pairs separated by commas, e.g. path=" in str(err.value)


def test_unknown_options_list_the_ones_the_model_takes(loads, tmp_path):
    folder = fake_folder(tmp_path / "pipe")
    with pytest.raises(ValueError, match=r"has no option\(s\) \['lora_path', 'stesp'\]; valid: \[") as err:
        build(f"diffusers:{folder}", CTX, **parse_model_args("stesp=4,lora_path=/x"))
    assert all(option in str(err.value) for option in GENERIC_OPTIONS)
    assert not loads.made  # refused before loading anything


# --- building and sampling


def test_a_folder_builds_through_the_auto_pipeline_with_its_settings_in_the_spec(one_thread, loads, tmp_path):
    folder = fake_folder(tmp_path / "pipe")
    name = f"diffusers:{folder}"
    gen = build(name, CTX, **parse_model_args("dtype=float32,steps=2,guidance=0"))
    (pipe,) = loads.made
    assert pipe.path == folder and pipe.load_kwargs["local_files_only"] is True
    assert pipe.load_kwargs["dtype"] == torch.float32
    spec = gen.spec
    assert spec.name == record_name(name) and "/" not in spec.name and ":" not in spec.name
    assert spec.family == "pretrained" and spec.steps == 2 and spec.nfe == 2 and spec.parameters == 6 + 20
    settings = spec.settings
    assert settings["source"] == str(folder.resolve()) and settings["repo"] == []
    assert (settings["recipe"], settings["pipeline"], settings["scheduler"]) == (
        "diffusers", "FakePipeline", "EulerDiscreteScheduler",  # the folder's own scheduler is kept
    )
    assert settings["guidance"] == 0.0 and isinstance(settings["guidance"], float)
    assert (settings["height"], settings["width"], settings["dtype"]) == (12, 12, "float32")  # 6 latents x 2
    images = gen.sample(["a red circle", "two squares", "a red circle"], [3, 1, 3])
    assert images.dtype == torch.uint8 and images.shape == (3, 3, 12, 12)
    assert torch.equal(images[0], images[2]) and not torch.equal(images[0], images[1])
    assert pipe.calls[-1]["steps"] == 2 and pipe.calls[-1]["guidance"] == 0.0 and pipe.calls[-1]["output_type"] == "pt"
    gen.sample(["x"], [0], steps=3)
    assert pipe.calls[-1]["steps"] == 3


def test_defaults_options_and_the_same_config_give_the_same_spec(one_thread, loads, tmp_path):
    folder = fake_folder(tmp_path / "pipe")
    name = f"diffusers:{folder}"
    default = build(name, CTX)
    assert (default.spec.steps, default.spec.settings["guidance"]) == (4, 0.0)
    assert build(name, CTX, steps=4, guidance=0).spec.hash == default.spec.hash  # 0 and 0.0 are one setting
    other = build(name, CTX, height=16, width=8, scheduler="EulerAncestralDiscreteScheduler")
    assert type(other.pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert other.spec.settings["scheduler"] == "EulerAncestralDiscreteScheduler"
    assert other.sample(["a"], [0]).shape == (1, 3, 16, 8) and other.spec.hash != default.spec.hash
    for options, says in [({"dtype": "float8"}, "unknown dtype 'float8'"), ({"steps": 0}, "steps = 0"),
                          ({"steps": 2.5}, "steps = 2.5"), ({"guidance": "high"}, "guidance = 'high'"),
                          ({"height": True}, "height = True")]:
        with pytest.raises(ValueError, match=says):
            build(name, CTX, **options)
    before = len(loads.made)
    with pytest.raises(ValueError, match="diffusers has no scheduler 'Euler'"):
        build(name, CTX, scheduler="Euler")
    assert len(loads.made) == before  # a bad scheduler fails before the weights are read
    with pytest.raises(ValueError, match="contradicts"):
        build(name, CTX, path=str(tmp_path / "other"))


@pytest.mark.parametrize("output", ["pt", "np", "pil"])
def test_tensor_array_and_pil_outputs_give_the_same_pixels(one_thread, loads, tmp_path, monkeypatch, output):
    gen = build(f"diffusers:{fake_folder(tmp_path / 'pipe')}", CTX, height=10, width=14)
    reference = gen.sample(["a", "b"], [1, 2])
    monkeypatch.setattr(FakePipeline, "output", output)
    images = gen.sample(["a", "b"], [1, 2])
    assert images.dtype == torch.uint8 and images.shape == (2, 3, 10, 14)
    assert torch.equal(images, reference)


@pytest.mark.parametrize("cls, guidance, nfe", [
    (FakePipeline, 3.0, 4),  # no CFG branch in the pipeline (FLUX-like): one pass a step
    (GuidedPipeline, 3.0, 8),
    (GuidedPipeline, 1.0, 4),
    (InlineGuidedPipeline, 3.0, 8),
    (InlineGuidedPipeline, 0.0, 4),
])
def test_nfe_counts_the_pipelines_own_cfg_batch(one_thread, loads, tmp_path, cls, guidance, nfe):
    loads.use(cls)
    gen = build(f"diffusers:{fake_folder(tmp_path / 'pipe')}", CTX, guidance=guidance)
    assert type(gen.pipe) is cls and gen.spec.nfe == nfe


def test_different_folders_never_share_a_spec(one_thread, loads, tmp_path):
    a, b = fake_folder(tmp_path / "a" / "pipe"), fake_folder(tmp_path / "b" / "pipe")  # same files and sizes
    spec_a, spec_b = build(f"diffusers:{a}", CTX).spec, build(f"diffusers:{b}", CTX).spec
    assert spec_a.weights_hash == spec_b.weights_hash
    assert spec_a.hash != spec_b.hash and spec_a.name != spec_b.name
    assert build(f"diffusers:{a}", CTX).spec.hash == spec_a.hash
    # the record folder name is one portable component, and slugs that collide are told apart by the hash
    assert record_name("lcm") == "lcm" and record_name("diffusers:/a/b-c") != record_name("diffusers:/a-b/c")
    long = record_name("diffusers:/" + "/".join(["folder"] * 40))
    assert len(long) < 90 and long.startswith("diffusers-folder")


# --- missing inputs, reported without loading


def test_a_missing_folder_is_reported_without_loading(loads, tmp_path):
    absent = tmp_path / "absent"
    (tmp_path / "empty").mkdir()
    problems = check_inputs(f"diffusers:{absent}", {"path": str(absent)})
    assert len(problems) == 1 and f"pipeline folder {absent} does not exist" in problems[0]
    assert "diffusers:/path/to/pipeline-folder" in problems[0]
    assert "no model_index.json" in check_inputs(f"diffusers:{tmp_path / 'empty'}", {})[0]
    assert "contradicts" in check_inputs(f"diffusers:{absent}", {"path": "/elsewhere"})[0]
    for path, says in [(absent, "does not exist"), (tmp_path / "empty", "no model_index.json")]:
        with pytest.raises(FileNotFoundError, match=says):
            build(f"diffusers:{path}", CTX)
    assert not loads.made
    from benchmarks.doctor import model_problems

    problems = model_problems([f"diffusers:{absent}"], {f"diffusers:{absent}": {"steps": 2, "bogus": 1}})
    assert any("unknown option(s) ['bogus']" in p for p in problems)
    assert any("does not exist" in p for p in problems) and not loads.made


def test_a_generic_preset_name_uses_the_same_checks(one_thread, loads, tmp_path):
    """A fixed name can run a generic pipeline: recipe "diffusers" with a path (what a preset would register)."""
    assert "does not exist" in check_inputs("my-model", {"recipe": "diffusers", "path": str(tmp_path / "no")})[0]
    gen = PretrainedGenerator.from_context(CTX, "my-model", recipe="diffusers", path=str(fake_folder(tmp_path / "p")))
    assert gen.spec.name == "my-model" and gen.spec.settings["source"] == str((tmp_path / "p").resolve())


def test_a_hub_id_missing_from_the_cache_says_how_to_get_it(loads, hub):
    problems = check_inputs("diffusers:stabilityai/sdxl-turbo", {"path": "stabilityai/sdxl-turbo"})
    assert len(problems) == 1
    assert f"stabilityai/sdxl-turbo is not in the local Hugging Face cache ({hub})" in problems[0]
    assert "`hf download stabilityai/sdxl-turbo`" in problems[0] and "--local-dir" in problems[0]
    with pytest.raises(FileNotFoundError, match="hf download stabilityai/sdxl-turbo"):
        build("diffusers:stabilityai/sdxl-turbo", CTX)
    assert not loads.made


def test_a_cached_hub_id_resolves_to_its_snapshot(one_thread, loads, hub):
    only = cached_snapshot(hub, "owner/repo", "a" * 40)
    gen = build("diffusers:owner/repo", CTX)
    assert loads.made[-1].path == only and loads.made[-1].load_kwargs["local_files_only"] is True
    assert gen.spec.settings["repo"] == ["owner/repo"] and gen.spec.settings["source"] == f"owner/repo@{'a' * 40}"
    assert check_inputs("diffusers:owner/repo", {"path": "owner/repo"}) == []
    # two snapshots: refs/main decides; without it the name must pick one
    main = cached_snapshot(hub, "owner/repo", "b" * 40, ref=True)
    assert build("diffusers:owner/repo", CTX).pipe.path == main
    assert build(f"diffusers:owner/repo@{'a' * 40}", CTX).pipe.path == only
    (hub / "models--owner--repo" / "refs" / "main").unlink()
    assert "2 snapshots" in check_inputs("diffusers:owner/repo", {})[0]
    assert "no snapshot 'c'" in check_inputs("diffusers:owner/repo@c", {})[0]
    (only / "model_index.json").unlink()  # a partial download
    assert "no model_index.json" in check_inputs(f"diffusers:owner/repo@{'a' * 40}", {})[0]


def test_env_precedence_of_the_hub_cache(monkeypatch, tmp_path):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert pretrained.hub_cache() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert pretrained.hub_cache() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert pretrained.hub_cache() == tmp_path / "cache"


def test_checking_a_generic_name_imports_no_diffusers(tmp_path):
    code = (
        "import sys; from baselines.registry import get_entry; from baselines.pretrained import check_inputs; "
        f"name = 'diffusers:{tmp_path / 'absent'}'; get_entry(name).load(); print(len(check_inputs(name, {{}}))); "
        "print('diffusers' in sys.modules)"
    )
    root = Path(__file__).parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.split() == ["1", "False"]


# --- the fixed recipes: presets of the same code path, specs unchanged

SPECS_BEFORE = {  # spec hashes computed with the adapter as it was before the generic one (same fakes, same files)
    ("lcm", ()): "24544e33f0816a1270e7abaf60cade3b4d2bdc7bd66ecc4d6daf3cc817915cac",
    ("sdxl-turbo", ()): "95dbdafe262bbcb84dc312ab555076430ee97109c44d8eac83a009385466aba0",
    ("sdxl-turbo", (("guidance", 2.0), ("steps", 2))): (
        "dba74618311628ca2dfb63e235de50e278f190c39a2ae89aabaa03e02111ecf7"
    ),
    ("sdxl-lightning", (("lora_path", "unet"),)): "3e4fe84f569cf39e23e3659333bc97785d6690183797faaad878852cb813566e",
    ("sd35-turbo", (("height", 16), ("width", 8))): "9ef4e859ffbe7a83292362f1e650f2c04b5479bbf766a11c38aea028b6725385",
    ("flux-schnell", (("guidance", 3.0),)): "70655c42b3193950d00b217da08b78c7d7011c36e37e8dbe3d821fc65bb7dcd4",
}


@pytest.mark.parametrize("recipe, options", list(SPECS_BEFORE))
def test_fixed_recipes_build_the_spec_they_built_before(one_thread, loads, tmp_path, recipe, options):
    folder = fake_folder(tmp_path / "pipe")
    expected, options = SPECS_BEFORE[recipe, options], dict(options)
    if "lora_path" in options:  # a whole U-Net file (no LoRA keys) for the fake pipeline's U-Net
        torch.manual_seed(1)
        save_file(torch.nn.Linear(2, 2).state_dict(), tmp_path / "unet.safetensors")
        options["lora_path"] = str(tmp_path / "unet.safetensors")
    gen = PretrainedGenerator.from_context(CTX, recipe, path=str(folder), **options)
    assert gen.spec.hash == expected
    assert "source" not in gen.spec.settings and gen.spec.name == recipe
    scheduler = RECIPES[recipe].scheduler
    assert type(gen.pipe.scheduler).__name__ == scheduler
    assert all(gen.pipe.scheduler.config[k] == v for k, v in RECIPES[recipe].scheduler_kwargs.items())
    images = gen.sample(["a b", "c"], [1, 2])
    call = gen.pipe.calls[-1]
    assert all(call[k] == v for k, v in RECIPES[recipe].call_kwargs.items())
    assert images.shape[:2] == (2, 3) and images.dtype == torch.uint8


# --- one real (tiny, random) pipeline through AutoPipelineForText2Image


def test_a_saved_tiny_pipeline_runs_through_the_auto_pipeline(one_thread, tmp_path):
    from tests import tiny_pipelines

    folder = tiny_pipelines.save_sdxl(tmp_path / "sdxl")
    gen = build(f"diffusers:{folder}", CTX, steps=2, guidance=2.0, height=16, width=16)
    rows: list[int] = []
    gen.pipe.unet.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    images = gen.sample(["a red circle", "two squares"], [0, 1])
    assert type(gen.pipe).__name__ == "StableDiffusionXLPipeline" == gen.spec.settings["pipeline"]
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.uint8
    assert sum(rows) == 2 * gen.spec.nfe == 2 * 2 * 2  # CFG at guidance 2 doubles the batch
    again = gen.sample(["two squares"], [1])
    assert (again.int() - images[1:].int()).abs().max() <= 1
