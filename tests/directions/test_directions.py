"""Direction files: the built-ins load, bad files give one message (file, key, reason), the
search order, where the environment lives, and membership edits that keep the file's comments."""

from __future__ import annotations

from pathlib import Path

import pytest

from provision.directions import (
    DirectionError,
    builtin_directions,
    editable_path,
    list_directions,
    load_direction,
    load_direction_file,
    with_member,
    without_member,
)
from provision.errors import ProvisionError
from provision.profiles import load_profile_file
from provision.resources import builtin_dir
from tests.cli_helpers import invoke, invoke_json
from tests.directions.helpers import TINY, direction_text, write_direction, write_profile


def test_builtin_directions_name_builtin_profiles_and_their_tasks():
    found = {d.name: d for d in builtin_directions()}
    assert set(found) == {"okvqa-vllm-swift", "internvl2-lmdeploy-xtuner"}
    okvqa = found["okvqa-vllm-swift"]
    assert okvqa.member_names == ["qwen2.5-vl-7b", "gemma-3-12b-it", "llama-3.2-11b-vision"]
    assert all(m.tasks == ("infer", "lora") for m in okvqa.members)
    pairs = zip(okvqa.profiles(), okvqa.members, strict=True)
    stacks = {p.task(t).stack for p, m in pairs for t in m.tasks}
    assert stacks == {"vllm", "ms-swift"}
    for profile in okvqa.profiles():
        assert profile.task("infer").packages[:3] == (
            "torch==2.6.0",
            "torchvision==0.21.0",
            "transformers==4.51.3",
        )
        assert "group-beam-search-dtype" in profile.fixes
    internvl = found["internvl2-lmdeploy-xtuner"]
    (profile,) = internvl.profiles()
    assert profile.name == "internvl2-2b"
    assert {profile.task(t).stack for t in internvl.members[0].tasks} == {"lmdeploy", "xtuner"}
    for direction in found.values():
        assert direction.shared and direction.builtin and direction.python == "3.11"


def test_env_lives_on_the_data_disk_by_default(dirs):
    write_profile(dirs.profiles, "tiny-a")
    write_direction(dirs.directions, "pair", [("tiny-a", ["infer"])])
    direction = load_direction("pair")
    assert direction.env_location() == dirs.data / "envs" / "direction-pair"
    assert direction.env_location("/elsewhere") == Path("/elsewhere/envs/direction-pair")
    write_direction(
        dirs.directions, "own", [("tiny-a", ["infer"])], environment={"path": "/srv/envs/own"}
    )
    assert load_direction("own").env_location() == Path("/srv/envs/own")


BAD = [
    ("name = 'x'\n", "description", "missing"),
    ('name = "bad"\ndescription = "d"\n', "members", "missing"),
    ('name = "bad"\ndescription = "d"\ncolour = "red"\n[[members]]\nprofile = "tiny-a"\n',
     "colour", "unknown key"),
    ('name = "bad"\ndescription = 3\n[[members]]\nprofile = "tiny-a"\n',
     "description", "must be string, got an integer"),
    ('name = "other"\ndescription = "d"\n[[members]]\nprofile = "tiny-a"\n',
     "name", "must match the file name"),
    ('name = "bad"\ndescription = "d"\npython = "three"\n[[members]]\nprofile = "tiny-a"\n',
     "python", "not a Python version"),
    ('name = "bad"\ndescription = "d"\n[[members]]\nprofile = "no-such"\n',
     "members[0].profile", "Unknown profile 'no-such'"),
    ('name = "bad"\ndescription = "d"\n[[members]]\nprofile = "tiny-a"\ntasks = ["lora"]\n',
     "members[0].tasks", "has no task 'lora'"),
    ('name = "bad"\ndescription = "d"\n[[members]]\nprofile = "tiny-a"\ntasks = ["train"]\n',
     "members[0].tasks", "'train' is not one of"),
    ('name = "bad"\ndescription = "d"\n[[members]]\nprofile = "tiny-a"\n'
     '[[members]]\nprofile = "tiny-a"\n', "members[1].profile", "listed twice"),
    ('name = "bad"\ndescription = "d"\n[[members]]\nprofile = "tiny-a"\nseats = 2\n',
     "members[0].seats", "unknown key"),
    ('name = "bad"\ndescription = "d"\npackages = ["not a req!"]\n[[members]]\n'
     'profile = "tiny-a"\n', "packages[0]", "is not a requirement"),
    ('name = "bad"\ndescription = "d"\npackages = ["torch==2.4.0"]\n[[members]]\n'
     'profile = "tiny-a"\n', "packages[0]", "torch family comes from the members"),
    ('name = "bad"\ndescription = "d"\n[environment]\npath = "envs/x"\n[[members]]\n'
     'profile = "tiny-a"\n', "environment.path", "must be absolute"),
    ('name = "bad"\ndescription = "d"\n[environment]\nshared = "yes"\n[[members]]\n'
     'profile = "tiny-a"\n', "environment.shared", "must be bool"),
    ('name = "bad"\ndescription = "d"\nmembers = "tiny-a"\n', "members", "[[members]] tables"),
    ("name = [\n", None, "is not valid TOML"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "key", "reason"), BAD, ids=[b[1] or b[2] for b in BAD])
def test_bad_direction_is_one_message_naming_file_key_reason(dirs, text, key, reason):
    write_profile(dirs.profiles, "tiny-a")
    path = dirs.directions / "bad.toml"
    path.write_text(text)
    with pytest.raises(DirectionError) as caught:
        load_direction_file(path)
    assert caught.value.key == key
    assert reason in caught.value.reason
    assert str(path) in caught.value.message


def test_bad_direction_cli_exits_2_without_traceback(dirs):
    write_profile(dirs.profiles, "tiny-a")
    (dirs.directions / "bad.toml").write_text(BAD[7][0])
    proc = invoke("direction", "show", "bad")
    assert proc.returncode == 2
    assert "key 'members[0].tasks'" in proc.stderr and "bad.toml" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = invoke("direction", "show", "nope")
    assert proc.returncode == 2 and "Unknown direction 'nope'" in proc.stderr


def test_user_direction_takes_the_builtins_place_and_list_shows_both(dirs):
    write_profile(dirs.profiles, "tiny-a")
    write_direction(dirs.directions, "okvqa-vllm-swift", [("tiny-a", ["infer"])])
    write_direction(dirs.directions, "mine", [("tiny-a", ["infer"])])
    found = {d.name: d for d in list_directions()}
    assert found["okvqa-vllm-swift"].member_names == ["tiny-a"]
    assert not found["okvqa-vllm-swift"].builtin
    assert found["internvl2-lmdeploy-xtuner"].builtin
    code, payload = invoke_json("direction", "list")
    assert code == 0
    rows = {r["name"]: r for r in payload["directions"]}
    assert rows["mine"]["members"] == {"tiny-a": ["infer"]}
    assert rows["mine"]["lock_state"] == "not locked"
    assert payload["environments"] == []


def test_machine_shared_folder_is_searched_after_the_users(dirs, monkeypatch):
    write_profile(dirs.profiles, "tiny-a")
    write_direction(dirs.data / "directions", "team", [("tiny-a", ["infer"])])
    monkeypatch.delenv("PROVISION_DIRECTIONS_DIR")
    direction = load_direction("team")
    assert direction.path == dirs.data / "directions" / "team.toml"


def test_show_prints_members_env_and_lock_state(dirs):
    code, payload = invoke_json("direction", "show", "internvl2-lmdeploy-xtuner")
    assert code == 0
    assert payload["members"] == [{"profile": "internvl2-2b", "tasks": ["infer", "lora"]}]
    assert payload["env"] == str(dirs.data / "envs" / "direction-internvl2-lmdeploy-xtuner")
    assert payload["lock"]["fresh"] is False  # PROVISION_LOCK_DIR is an empty folder here
    proc = invoke("direction", "show", "okvqa-vllm-swift")
    assert proc.returncode == 0
    assert "qwen2.5-vl-7b (infer+lora)" in proc.stdout
    assert "datasets==3.3.2" in proc.stdout


def test_add_and_remove_edit_the_text_and_keep_comments(dirs):
    for name in ("tiny-a", "tiny-b"):
        write_profile(dirs.profiles, name, lora=TINY)
    path = write_direction(dirs.directions, "pair", [("tiny-a", ["infer"])], packages=["six"])
    direction = load_direction("pair")
    added = with_member(direction, "tiny-b", ("infer", "lora"), note="the second model")
    assert added.member("tiny-b").tasks == ("infer", "lora")
    assert added.member("tiny-b").note == "the second model"
    assert "# member tiny-a" in added.text and "# written by the tests" in added.text
    more = with_member(added, "tiny-a", ("lora",))
    assert more.member("tiny-a").tasks == ("infer", "lora")
    assert "# member tiny-a" in more.text
    with pytest.raises(ProvisionError, match="already a member"):
        with_member(more, "tiny-a", ("infer",))
    removed = without_member(more, "tiny-a")
    assert removed.member_names == ["tiny-b"]
    assert "# member tiny-a" not in removed.text  # its comment went with it
    assert "# written by the tests" in removed.text and removed.packages == ("six",)
    with pytest.raises(ProvisionError, match="only member"):
        without_member(removed, "tiny-b")
    with pytest.raises(ProvisionError, match="not a member"):
        without_member(removed, "tiny-a")
    with pytest.raises(DirectionError, match="Unknown profile"):
        with_member(direction, "no-such-profile")
    assert path.read_text() == direction.text  # nothing written by the edits themselves


def test_edited_builtin_goes_to_the_users_folder_else_the_machines(dirs, monkeypatch):
    builtin = load_direction("okvqa-vllm-swift")
    assert builtin.builtin and builtin.path.parent == builtin_dir("directions")
    assert editable_path(builtin) == dirs.directions / "okvqa-vllm-swift.toml"
    monkeypatch.delenv("PROVISION_DIRECTIONS_DIR")
    assert editable_path(builtin) == dirs.data / "directions" / "okvqa-vllm-swift.toml"
    write_profile(dirs.profiles, "tiny-a")
    own = write_direction(dirs.data / "directions", "own", [("tiny-a", ["infer"])])
    assert editable_path(load_direction("own")) == own


def test_direction_text_helper_round_trips(dirs):
    write_profile(dirs.profiles, "tiny-a")
    text = direction_text("x", [("tiny-a", ["infer"])], packages=["six"], python="3.11")
    path = dirs.directions / "x.toml"
    path.write_text(text)
    direction = load_direction_file(path)
    assert (direction.python, direction.packages) == ("3.11", ("six",))
    assert load_profile_file(dirs.profiles / "tiny-a.toml").task("infer").packages == tuple(TINY)


def test_lock_file_name_is_checked_before_resolving(dirs, tmp_path):
    proc = invoke(
        "direction", "lock", "internvl2-lmdeploy-xtuner", "-o", str(tmp_path / "x.y.toml")
    )
    assert proc.returncode == 2 and "is not a PEP 751 name" in proc.stderr
    proc = invoke("direction", "lock", "--all", "okvqa-vllm-swift")
    assert proc.returncode == 2 and "give no NAME" in proc.stderr
    proc = invoke("direction", "lock")
    assert proc.returncode == 2 and "Which direction?" in proc.stderr


def test_add_with_tasks_records_them_as_plain_names(dirs):
    """--task is an enum on the command line; the direction file gets the task names."""
    write_profile(dirs.profiles, "tiny-a")
    write_profile(dirs.profiles, "tiny-b", lora=list(TINY))
    path = dirs.directions / "team.toml"
    path.write_text('name = "team"\ndescription = "d"\n[[members]]\nprofile = "tiny-a"\n')
    proc = invoke("direction", "add", "team", "tiny-b", "--task", "lora", "--task", "infer",
                  "--no-lock")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    member = next(m for m in load_direction("team").members if m.profile == "tiny-b")
    assert list(member.tasks) == ["lora", "infer"]
    assert "Task." not in path.read_text()
