"""Request bodies for the nine seeded models: valid, valid edge values, and invalid (with the loc expected).

Data only, shared by tests. Transcribed from /work/shared/seed-models.md rather than generated from
the pydantic models, so a typo in a model shows up as a failing test. Every invalid body breaks
exactly one rule of a valid body from VALID_BODIES or BOUNDARY_BODIES.
"""

from __future__ import annotations

from typing import Any

VEO2 = "fal-ai/veo2/image-to-video"
WAN_PRO = "fal-ai/wan-pro/image-to-video"
KLING = "fal-ai/kling-video/v2.1/standard/image-to-video"
SEEDANCE = "fal-ai/bytedance/seedance/v1/lite/image-to-video"
HAILUO = "fal-ai/minimax/hailuo-02/pro/image-to-video"
WAN_I2V = "fal-ai/wan-i2v"
PIXVERSE = "fal-ai/pixverse/v4.5/image-to-video"
LUMA = "fal-ai/luma-dream-machine/ray-2-flash/image-to-video"
MAGI = "fal-ai/magi-distilled/image-to-video"
MODEL_IDS = (VEO2, WAN_PRO, KLING, SEEDANCE, HAILUO, WAN_I2V, PIXVERSE, LUMA, MAGI)

MAX_PROMPT = 2500  # ValidationLimits() default
# A real 1x1 PNG and a real 1x1 GIF.
TINY_PNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
TINY_GIF = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"
IMAGE = "https://example.com/images/cat.png"

VALID_BODIES: dict[str, dict[str, Any]] = {
    model_id: {"prompt": "A cat walks slowly toward the camera", "image_url": IMAGE} for model_id in MODEL_IDS
}

# Every enum value fal documents, per model and field.
ENUMS: dict[str, dict[str, tuple[Any, ...]]] = {
    VEO2: {
        "aspect_ratio": ("auto", "auto_prefer_portrait", "16:9", "9:16"),
        "duration": ("5s", "6s", "7s", "8s"),
    },
    WAN_PRO: {},
    KLING: {"duration": ("5", "10")},
    SEEDANCE: {"resolution": ("480p", "720p", "1080p"), "duration": ("5", "10")},
    HAILUO: {},
    WAN_I2V: {
        "resolution": ("480p", "720p"),
        "acceleration": ("none", "regular"),
        "aspect_ratio": ("auto", "16:9", "9:16", "1:1"),
    },
    PIXVERSE: {
        "aspect_ratio": ("16:9", "4:3", "1:1", "3:4", "9:16"),
        "resolution": ("360p", "540p", "720p", "1080p"),
        "duration": ("5", "8"),
        "style": ("anime", "3d_animation", "clay", "comic", "cyberpunk"),
    },
    LUMA: {
        "aspect_ratio": ("16:9", "9:16", "4:3", "3:4", "21:9", "9:21"),
        "resolution": ("540p", "720p", "1080p"),
        "duration": ("5s",),
    },
    MAGI: {
        "resolution": ("480p", "720p"),
        "aspect_ratio": ("auto", "16:9", "9:16", "1:1"),
        "num_inference_steps": (4, 8, 16, 32),
    },
}

# fal's documented defaults (shown in the JSON schema).
DEFAULTS: dict[str, dict[str, Any]] = {
    VEO2: {"aspect_ratio": "auto", "duration": "5s"},
    WAN_PRO: {"enable_safety_checker": True},
    KLING: {"duration": "5", "negative_prompt": "blur, distort, and low quality", "cfg_scale": 0.5},
    SEEDANCE: {"resolution": "720p", "duration": "5"},
    HAILUO: {"prompt_optimizer": True},
    WAN_I2V: {
        "num_frames": 81,
        "frames_per_second": 16,
        "resolution": "720p",
        "num_inference_steps": 30,
        "guide_scale": 5,
        "shift": 5,
        "acceleration": "regular",
        "aspect_ratio": "auto",
    },
    PIXVERSE: {"aspect_ratio": "16:9", "resolution": "720p", "duration": "5", "negative_prompt": ""},
    LUMA: {"aspect_ratio": "16:9", "resolution": "540p", "duration": "5s"},
    MAGI: {
        "num_frames": 96,
        "resolution": "720p",
        "num_inference_steps": 16,
        "enable_safety_checker": True,
        "aspect_ratio": "auto",
    },
}

# Integer ranges (inclusive) and the fields taking a seed, per model.
INT_RANGES: dict[str, dict[str, tuple[int, int]]] = {
    WAN_I2V: {"num_frames": (81, 100), "frames_per_second": (5, 24), "num_inference_steps": (1, 100)},
    MAGI: {"num_frames": (96, 192)},
}
SEED_MODELS = (WAN_PRO, SEEDANCE, WAN_I2V, PIXVERSE, MAGI)
BOOL_FIELDS: dict[str, tuple[str, ...]] = {
    WAN_PRO: ("enable_safety_checker",),
    SEEDANCE: ("camera_fixed",),
    HAILUO: ("prompt_optimizer",),
    WAN_I2V: ("enable_safety_checker", "enable_prompt_expansion"),
    LUMA: ("loop",),
    MAGI: ("enable_safety_checker",),
}
NEGATIVE_PROMPT_MODELS = (KLING, WAN_I2V, PIXVERSE)
END_IMAGE_MODELS = (SEEDANCE, LUMA)


def _with(model_id: str, **changes: Any) -> dict[str, Any]:
    return {**VALID_BODIES[model_id], **changes}


def _without(model_id: str, field: str) -> dict[str, Any]:
    return {k: v for k, v in VALID_BODIES[model_id].items() if k != field}


def _boundary_bodies() -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for model_id in MODEL_IDS:
        out += [
            (model_id, _with(model_id, image_url=TINY_PNG)),
            (model_id, _with(model_id, image_url=TINY_GIF)),
            (model_id, _with(model_id, image_url="http://example.com/cat.png")),
            (model_id, _with(model_id, image_url="HTTPS://Example.COM:8443/a%20b.png?x=1#frag")),
            (model_id, _with(model_id, prompt="x" * MAX_PROMPT)),
            (model_id, _with(model_id, prompt="  a cat, with émoji 🐈 and unicode  ")),
        ]
        out += [
            (model_id, _with(model_id, **{f: v})) for f, values in ENUMS[model_id].items() for v in values
        ]
        out += [
            (model_id, _with(model_id, **{f: v}))
            for f in BOOL_FIELDS.get(model_id, ())
            for v in (True, False)
        ]
        out += [
            (model_id, _with(model_id, **{f: v}))
            for f, bounds in INT_RANGES.get(model_id, {}).items()
            for v in bounds
        ]
        if model_id in SEED_MODELS:
            out += [(model_id, _with(model_id, seed=0)), (model_id, _with(model_id, seed=2**32 - 1))]
        if model_id in NEGATIVE_PROMPT_MODELS:
            out += [
                (model_id, _with(model_id, negative_prompt="")),
                (model_id, _with(model_id, negative_prompt="y" * MAX_PROMPT)),
            ]
        if model_id in END_IMAGE_MODELS:
            out += [
                (model_id, _with(model_id, end_image_url=TINY_PNG)),
                (model_id, _with(model_id, end_image_url=IMAGE)),
            ]
    out += [
        (SEEDANCE, _with(SEEDANCE, seed=-1)),
        (KLING, _with(KLING, cfg_scale=0)),
        (KLING, _with(KLING, cfg_scale=1)),
        (KLING, _with(KLING, cfg_scale=0.25)),
        (WAN_I2V, _with(WAN_I2V, guide_scale=7.5)),
        (WAN_I2V, _with(WAN_I2V, guide_scale=5)),
        (WAN_I2V, _with(WAN_I2V, shift=3.0)),
        (PIXVERSE, _with(PIXVERSE, resolution="1080p", duration="5")),
        (PIXVERSE, _with(PIXVERSE, resolution="720p", duration="8")),
        (PIXVERSE, _with(PIXVERSE, resolution="1080p")),  # default duration "5" applies
        (PIXVERSE, _with(PIXVERSE, duration="8")),  # default resolution 720p applies
        (MAGI, _with(MAGI, num_frames=120, resolution="480p")),
    ]
    return out


BOUNDARY_BODIES: list[tuple[str, dict[str, Any]]] = _boundary_bodies()

_BAD_IMAGE_URLS = {
    "ftp": "ftp://example.com/cat.png",
    "javascript": "javascript:alert(1)",
    "file": "file:///etc/passwd",
    "no host": "https:///cat.png",
    "space": "https://example.com/a cat.png",
    "too long": "https://example.com/" + "a" * 2048,
    "empty": "",
    "text data URI": "data:text/plain;base64,aGVsbG8=",
    "svg data URI": "data:image/svg+xml;base64,PHN2Zz48L3N2Zz4=",
    "svg utf8 data URI": "data:image/svg+xml;utf8,<svg></svg>",
    "data URI not base64": "data:image/png,iVBORw0KGgo=",
    "broken base64 char": "data:image/png;base64,iVBORw0K*gAAAA==",
    "broken base64 length": "data:image/png;base64,iVBORw0KGgoAA",
    "base64 inner padding": "data:image/png;base64,iVBO=w0KGgoAAAA",
    "base64 whitespace": "data:image/png;base64,iVBORw0K GgoAAAA",
    "base64 newline": "data:image/png;base64,iVBORw0K\nGgoAAAA",
    "base64 url-safe": "data:image/png;base64,iVBORw0K-_goAAAA",
    "empty data URI": "data:image/png;base64,",
}


def _invalid_bodies() -> list[tuple[str, object, tuple[str, ...]]]:
    out: list[tuple[str, object, tuple[str, ...]]] = []
    for model_id in MODEL_IDS:
        out += [
            (model_id, _without(model_id, "prompt"), ("body", "prompt")),
            (model_id, _with(model_id, prompt=""), ("body", "prompt")),
            (model_id, _with(model_id, prompt=" \n\t "), ("body", "prompt")),
            (model_id, _with(model_id, prompt="x" * (MAX_PROMPT + 1)), ("body", "prompt")),
            (model_id, _with(model_id, prompt=42), ("body", "prompt")),
            (model_id, _with(model_id, prompt=None), ("body", "prompt")),
            (model_id, _without(model_id, "image_url"), ("body", "image_url")),
            (model_id, _with(model_id, image_url=["https://example.com/a.png"]), ("body", "image_url")),
            (model_id, _with(model_id, unknown_field=1), ("body", "unknown_field")),
            (model_id, [VALID_BODIES[model_id]], ("body",)),
            (model_id, "prompt=a cat", ("body",)),
            (model_id, None, ("body",)),
        ]
        out += [
            (model_id, _with(model_id, image_url=url), ("body", "image_url"))
            for url in _BAD_IMAGE_URLS.values()
        ]
        for field, values in ENUMS[model_id].items():
            out.append((model_id, _with(model_id, **{field: "bogus"}), ("body", field)))
            out.append((model_id, _with(model_id, **{field: str(values[0]).upper() + " "}), ("body", field)))
            if isinstance(values[0], str) and values[0].isdigit():  # "5" is a string enum: 5 is wrong
                out.append((model_id, _with(model_id, **{field: int(values[0])}), ("body", field)))
        for field in BOOL_FIELDS.get(model_id, ()):
            out += [(model_id, _with(model_id, **{field: v}), ("body", field)) for v in ("true", 1, None)]
        for field, (low, high) in INT_RANGES.get(model_id, {}).items():
            out += [
                (model_id, _with(model_id, **{field: v}), ("body", field))
                for v in (low - 1, high + 1, low + 0.5, float(low), True, str(low), None)
            ]
        if model_id in SEED_MODELS:
            bad_seeds: tuple[object, ...] = (
                (-2, 1.5, True, "7") if model_id == SEEDANCE else (-1, 1.5, True, "7")
            )
            out += [(model_id, _with(model_id, seed=v), ("body", "seed")) for v in bad_seeds]
        if model_id in NEGATIVE_PROMPT_MODELS:
            out += [
                (
                    model_id,
                    _with(model_id, negative_prompt="y" * (MAX_PROMPT + 1)),
                    ("body", "negative_prompt"),
                ),
                (model_id, _with(model_id, negative_prompt=["blur"]), ("body", "negative_prompt")),
            ]
        if model_id in END_IMAGE_MODELS:
            out += [
                (model_id, _with(model_id, end_image_url=url), ("body", "end_image_url"))
                for url in _BAD_IMAGE_URLS.values()
            ]
    out += [
        (MAGI, _with(MAGI, num_inference_steps=v), ("body", "num_inference_steps"))
        for v in (12, 0, 64, 4.0, True, "16")
    ]
    out += [
        (KLING, _with(KLING, cfg_scale=v), ("body", "cfg_scale")) for v in (-0.1, 1.01, "0.5", True, None)
    ]
    out += [
        (WAN_I2V, _with(WAN_I2V, guide_scale="5"), ("body", "guide_scale")),
        (WAN_I2V, _with(WAN_I2V, shift=False), ("body", "shift")),
        (PIXVERSE, _with(PIXVERSE, resolution="1080p", duration="8"), ("body", "duration")),
    ]
    return out


INVALID_BODIES: list[tuple[str, object, tuple[str, ...]]] = _invalid_bodies()
