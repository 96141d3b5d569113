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
