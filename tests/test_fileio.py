"""Atomic writes (ghostvlad.fileio): readers see the old file or the whole new one, never a part; nothing is
left behind on failure; the file gets an ordinary file's mode."""
import errno
import os

import pytest

from ghostvlad import fileio
from ghostvlad.errors import describe


def test_content_is_written_and_the_folder_created(tmp_path):
    path = fileio.atomic_write(tmp_path / "a" / "b" / "out.bin", lambda tmp: open(tmp, "wb").write(b"\x00\x01abc"))
    assert path == tmp_path / "a" / "b" / "out.bin" and path.read_bytes() == b"\x00\x01abc"
    assert os.listdir(path.parent) == ["out.bin"]


def test_text_is_utf8_and_surrogate_escaped_names_are_their_own_bytes(tmp_path):
    name = os.fsdecode(b"caf\xe9.wav")  # a Latin-1 file name, not valid UTF-8
    path = fileio.atomic_write_text(tmp_path / "list.txt", f"\u00e9t\u00e9 {name}\n")
    assert path.read_bytes() == "\u00e9t\u00e9 ".encode() + b"caf\xe9.wav\n"


def test_an_existing_file_is_replaced_whole_and_open_readers_keep_the_old_one(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old contents")
    with open(path) as reader:
        seen_during = []
        fileio.atomic_write(path, lambda tmp: (seen_during.append(path.read_text()),
                                               open(tmp, "w").write("new contents")))
        assert reader.read() == "old contents"  # the old file, intact, for a reader that had it open
    assert seen_during == ["old contents"]  # while writing, the target still held the old version
    assert path.read_text() == "new contents" and os.listdir(tmp_path) == ["out.txt"]


@pytest.mark.parametrize("error", [OSError(errno.EIO, "I/O error"), ValueError("bad"), KeyboardInterrupt()])
def test_a_failed_replacement_keeps_the_old_file_and_leaves_no_temporary(tmp_path, error):
    path = tmp_path / "out.txt"
    path.write_text("old contents")

    def failing(tmp):
        open(tmp, "w").write("half")
        raise error

    with pytest.raises(type(error)):
        fileio.atomic_write(path, failing)
    assert path.read_text() == "old contents" and os.listdir(tmp_path) == ["out.txt"]


def test_current_umask_reads_without_changing_it():
    old = os.umask(0o027)
    try:
        assert fileio.current_umask() == 0o027 and fileio.current_umask() == 0o027
    finally:
        os.umask(old)


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_written_files_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = fileio.atomic_write_text(tmp_path / "out.txt", "x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_failed_write_names_the_target_and_leaves_nothing(tmp_path):
    target = tmp_path / "out.npz"

    def full_disk(tmp):
        with open(tmp, "wb") as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError) as info:
        fileio.atomic_write(target, full_disk)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError) as info:  # a file where a folder is expected
        fileio.atomic_write_text(tmp_path / "file" / "out.txt", "x")
    assert describe(info.value).startswith(str(tmp_path / "file"))


def test_a_symbolic_link_is_written_through_and_a_fifo_is_refused(tmp_path):
    (tmp_path / "real").mkdir()
    link = tmp_path / "link.txt"
    link.symlink_to(tmp_path / "real" / "target.txt")  # dangling until written
    fileio.atomic_write_text(link, "through")
    assert link.is_symlink() and (tmp_path / "real" / "target.txt").read_text() == "through"
    fifo = tmp_path / "fifo.txt"
    os.mkfifo(fifo)
    with pytest.raises(OSError) as info:
        fileio.atomic_write_text(fifo, "x")
    assert describe(info.value) == f"{fifo}: exists and is not a regular file (a device, FIFO or socket)"
    assert fifo.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == ["fifo.txt", "link.txt", "real"]
