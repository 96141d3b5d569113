"""The compose file wires Label Studio and the backend the way SPEC section 7 requires."""

import yaml

from tests.media import REPO


def load(name):
    return yaml.safe_load((REPO / "docker" / name).read_text())


def test_backend_reaches_label_studio_by_service_name_and_label_studio_may_call_it():
    compose = load("docker-compose.yml")
    studio = compose["services"]["label-studio"]["environment"]
    backend = compose["services"]["mdsvqa"]["environment"]
    assert backend["LABEL_STUDIO_URL"] == "http://label-studio:8080"
    assert backend["MDSVQA_PUBLIC_URL"] == "http://mdsvqa:9090"
    assert "LABEL_STUDIO_TOKEN" in backend["LABEL_STUDIO_API_KEY"]
    assert "LABEL_STUDIO_TOKEN" in studio["LABEL_STUDIO_USER_TOKEN"]
    assert studio["LABEL_STUDIO_ML_BLOCK_LOCAL_IP"] == "false"
    assert studio["LABEL_STUDIO_SSRF_PROTECTION_ENABLED"] == "false"
    assert studio["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert {"/models", "/data"} <= {v.split(":")[1] for v in compose["services"]["mdsvqa"]["volumes"]}


def test_gpu_override_requests_a_gpu_and_the_cuda_image():
    override = load("docker-compose.gpu.yml")["services"]["mdsvqa"]
    assert override["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    assert override["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_images_run_as_non_root_with_a_healthcheck():
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        text = (REPO / "docker" / name).read_text()
        assert "\nUSER 10001:10001\n" in text
        assert "HEALTHCHECK" in text and "/health" in text
        assert 'VOLUME ["/models", "/data"]' in text


def test_cpu_image_takes_its_base_torch_and_ca_as_build_arguments_with_public_defaults():
    text = (REPO / "docker" / "Dockerfile.cpu").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm\n" in text
    assert "FROM ${BASE_IMAGE} AS runtime" in text
    assert 'ARG TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"' in text  # the pair of scripts/setup.sh
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert 'ARG CA_BUNDLE=""' in text
    # Build inputs (wheels, CA, sources) stay in the build stage: only the venv reaches the image.
    final = text.rsplit("\nFROM runtime\n", 1)[1]
    assert "COPY --from=build /opt/venv /opt/venv" in final
    assert "docker/local" not in final and "pip install" not in final
    local = REPO / "docker" / "local"
    assert (local / "README.md").is_file() and (local / ".gitignore").read_text().startswith("*\n")


def test_torchvision_guard_wraps_only_the_two_unguarded_fake_registrations():
    import importlib.util

    spec = importlib.util.spec_from_file_location("guard_torchvision", REPO / "docker" / "guard_torchvision.py")
    assert spec is not None and spec.loader is not None
    guard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(guard)
    source = (
        "import torch\nimport torchvision.extension\n\n"
        '@register_meta("roi_align")\ndef meta_roi_align(x):\n    return x\n\n'
        '@torch.library.register_fake("torchvision::nms")\ndef meta_nms(x):\n    return x\n\n'
        '@torch.library.register_fake("torchvision::qnms")\ndef meta_qnms(x):\n    return x\n'
    )
    guarded, count = guard.UNGUARDED.subn(guard.GUARDED, source)
    assert count == 2
    assert guarded.count("if torchvision.extension._has_ops() else (lambda fn: fn))") == 2
    assert '@register_meta("roi_align")' in guarded
    compile(guarded, "_meta_registrations.py", "exec")
    assert guard.UNGUARDED.subn(guard.GUARDED, guarded)[1] == 0  # a second pass changes nothing


def test_smoke_script_is_bounded_and_cleans_up_its_container():
    text = (REPO / "scripts" / "docker_smoke.sh").read_text()
    assert "set -euo pipefail" in text
    assert "trap cleanup EXIT" in text and 'docker rm -f -v "$name"' in text
    assert "--network host" in text and ":/videos:ro" in text
    for bound in ("SMOKE_BUILD_TIMEOUT", "SMOKE_HEALTH_TIMEOUT", "SMOKE_SCORE_TIMEOUT"):
        assert bound in text
