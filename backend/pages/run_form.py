"""The run form: browser fields to a validated `RunCreate`/`RunSettings`, and errors back to fields."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile

from backend.models import Run
from backend.schemas import RunCreate, RunSettings

JSON_FIELDS = ("recipe_config", "optimizer", "averaging", "compression")
DATASET_KINDS = ("keep", "none", "upload", "url")
_LOC_TO_FIELD = {("recipe", "name"): "recipe_name", ("recipe", "config"): "recipe_config"}


def form_values(form: FormData) -> dict[str, str]:
    """The text fields, kept as typed so the form can be shown again with its errors."""
    return {name: value for name, value in form.items() if isinstance(value, str) and name != "csrf_token"}


def values_from_run(run: Run) -> dict[str, str]:
    dataset = run.dataset
    return {
        "slug": run.slug,
        "name": run.name,
        "description": run.description,
        "recipe_name": run.recipe_name,
        "recipe_config": json.dumps(run.recipe_config, indent=2),
        "target_batch_size": str(run.target_batch_size),
        "optimizer": json.dumps(run.optimizer, indent=2),
        "averaging": json.dumps(run.averaging, indent=2),
        "compression": json.dumps(run.compression, indent=2),
        "auth_mode": run.auth_mode,
        "allowlist": "\n".join(run.allowlist),
        "initial_peers": "\n".join(run.initial_peers),
        "dataset_kind": "keep" if dataset else "none",
        "dataset_url": (dataset.url or "") if dataset and dataset.kind == "url" else "",
        "dataset_format": dataset.format if dataset else "",
    }


def _split(text: str) -> list[str]:
    return [item for item in re.split(r"[\s,]+", text) if item]


def parse_run_form(values: dict[str, str], *, with_slug: bool) -> tuple[RunSettings | None, dict[str, str]]:
    """Validate the form; returns the settings (a RunCreate when `with_slug`) or field errors."""
    errors: dict[str, str] = {}
    data: dict[str, Any] = {
        "name": values.get("name", ""),
        "description": values.get("description", ""),
        "target_batch_size": values.get("target_batch_size", "").strip(),
        "auth_mode": values.get("auth_mode", "volunteers"),
        "allowlist": _split(values.get("allowlist", "")),
        "initial_peers": _split(values.get("initial_peers", "")),
    }
    parsed_json = {}
    for field in JSON_FIELDS:
        text = values.get(field, "").strip() or "{}"
        try:
            parsed_json[field] = json.loads(text)
        except json.JSONDecodeError as e:
            errors[field] = f"Not valid JSON: {e.msg} (line {e.lineno})."
            continue
        if not isinstance(parsed_json[field], dict):
            errors[field] = 'Must be a JSON object, like {"lr": 0.001}.'
    data["recipe"] = {
        "name": values.get("recipe_name", "").strip(),
        "config": parsed_json.get("recipe_config", {}),
    }
    for field in ("optimizer", "averaging", "compression"):
        data[field] = parsed_json.get(field, {})
    model: type[RunSettings] = RunSettings
    if with_slug:
        model = RunCreate
        data["slug"] = values.get("slug", "").strip()
    try:
        result = model.model_validate(data)
    except ValidationError as e:
        for error in e.errors():
            loc = [str(part) for part in error["loc"]]
            key = (loc[0], loc[1]) if len(loc) >= 2 else None
            field = _LOC_TO_FIELD.get(key, loc[0]) if key else (loc[0] if loc else "form")
            errors.setdefault(field, _message(field, str(error["msg"]), error["type"]))
        return None, errors
    return (None, errors) if errors else (result, {})


def _message(field: str, message: str, kind: str) -> str:
    if kind == "string_pattern_mismatch":
        if field == "slug":
            return "Use lowercase letters, digits and dashes."
        return "Use letters, digits, dots, dashes, underscores or colons."
    return message.removeprefix("Value error, ")


def dataset_choice(form: FormData, values: dict[str, str]) -> tuple[str, UploadFile | None, dict[str, str]]:
    """Which dataset change the form asks for, with its errors."""
    kind = values.get("dataset_kind", "none")
    upload = form.get("dataset_file")
    upload = upload if isinstance(upload, UploadFile) and upload.filename else None
    errors = {}
    if kind not in DATASET_KINDS:
        errors["dataset_kind"] = "Choose how the dataset is provided."
    elif kind == "upload" and upload is None:
        errors["dataset_file"] = "Choose a file to upload."
    elif kind == "url" and not values.get("dataset_url", "").strip():
        errors["dataset_url"] = "Enter the dataset's URL."
    return kind, upload, errors
