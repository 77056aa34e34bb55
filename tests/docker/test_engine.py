"""The test engine itself: the docker SDK builds on the local base image and runs offline."""

from __future__ import annotations

import textwrap

# Python version, network interfaces and the open-file limit, as the container sees them.
PROBE = (
    "import socket, sys, resource; print(sys.version_info[:2], "
    "[n for _, n in socket.if_nameindex()], resource.getrlimit(resource.RLIMIT_NOFILE))"
)


def test_sdk_builds_from_the_local_base_and_runs_without_network(client, base_image, tmp_path):
    (tmp_path / "Dockerfile").write_text(
        textwrap.dedent(
            f"""\
            FROM {base_image}
            RUN useradd --create-home app
            USER app
            CMD ["python3", "-c", "{PROBE}"]
            """
        )
    )
    image, _logs = client.images.build(path=str(tmp_path), tag="localhost/engine-check:1", rm=True)
    try:
        out = client.containers.run(image.id, network_mode="none", remove=True).decode()
        # python3.11 from Debian, only the loopback interface, and the DESIGN's 1024 open files.
        assert out.strip() == "(3, 11) ['lo'] (1024, 1024)"
        assert image.attrs["Config"]["User"] == "app"
    finally:
        client.images.remove(image.id, force=True)


def test_base_image_is_lean_and_has_no_latest_tag(client, base_image):
    image = client.images.get(base_image)
    assert not any(tag.endswith(":latest") for tag in image.tags)
    assert image.attrs["Size"] < 200 * 2**20, image.attrs["Size"]
