"""builder.media.fat: rewriting a file inside FAT12/16 images, checked with mtools and fsck."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder.errors import InputError
from builder.media.fat import FatError, FatImage
from builder.run import run

GRUB = b"set default=\"1\"\nmenuentry 'Install' {\n\tlinuxefi /vmlinuz quiet\n}\n"


def make_image(folder: Path, kib: int, fat: int | None = None, fill: int = 0) -> Path:
    """mkfs.vfat image with EFI/BOOT/{BOOTX64.EFI, grub.cfg} and a long-named file."""
    image = folder / f"fat{fat or 'auto'}-{kib}.img"
    args = ["mkfs.vfat", "--invariant", "-n", "ANACONDA", "-C", image, str(kib)]
    if fat:
        args[1:1] = ["-F", str(fat)]
    run(args)
    (folder / "BOOTX64.EFI").write_bytes(bytes(range(256)) * 300)
    (folder / "grub.cfg").write_bytes(GRUB)
    (folder / "a-rather-long-file-name.conf").write_bytes(b"long name\n")
    run(["mmd", "-i", image, "::EFI", "::EFI/BOOT"])
    run(["mcopy", "-i", image, folder / "BOOTX64.EFI", folder / "grub.cfg",
         folder / "a-rather-long-file-name.conf", "::EFI/BOOT/"])
    if fill:
        (folder / "filler.bin").write_bytes(b"\xaa" * fill)
        run(["mcopy", "-i", image, folder / "filler.bin", "::filler.bin"])
    return image


def mtype(image: Path, path: str) -> bytes:
    return run(["mtype", "-i", image, f"::{path}"]).stdout


def fsck_clean(image: Path) -> bool:
    return run(["fsck.vfat", "-n", image], check=False).returncode == 0


def rewrite(image: Path, path: str, content: bytes) -> None:
    data = bytearray(image.read_bytes())
    FatImage(data, image.name).write(path, content)
    image.write_bytes(data)


@pytest.fixture(params=[12, 16], ids=["fat12", "fat16"])
def image(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return make_image(tmp_path, 1440 if request.param == 12 else 20000, request.param)


def test_kind_and_read(image: Path) -> None:
    fat_image = FatImage(bytearray(image.read_bytes()))
    assert fat_image.fat12 == ("fat12" in image.name)
    assert fat_image.read("EFI/BOOT/grub.cfg") == GRUB == mtype(image, "EFI/BOOT/grub.cfg")
    # FAT names are case-insensitive; the 8.3 alias and the long name both work.
    assert fat_image.read("/efi/boot/GRUB.CFG") == GRUB
    assert fat_image.read("EFI/BOOT/a-rather-long-file-name.conf") == b"long name\n"
    assert fat_image.read("EFI/BOOT/bootx64.efi") == bytes(range(256)) * 300


@pytest.mark.parametrize("size", [0, 1, 511, 512, 4096, 70_000])
def test_rewrite_is_what_mtools_reads(image: Path, size: int) -> None:
    content = bytes((i * 7) % 251 for i in range(size))
    before_efi = mtype(image, "EFI/BOOT/BOOTX64.EFI")
    rewrite(image, "EFI/BOOT/grub.cfg", content)
    assert mtype(image, "EFI/BOOT/grub.cfg") == content
    assert mtype(image, "EFI/BOOT/BOOTX64.EFI") == before_efi  # the neighbour is intact
    assert mtype(image, "EFI/BOOT/a-rather-long-file-name.conf") == b"long name\n"
    assert fsck_clean(image)


def test_grow_then_shrink_frees_clusters(image: Path) -> None:
    data = bytearray(image.read_bytes())
    fat_image = FatImage(data)
    free = len(fat_image.free_clusters())
    fat_image.write("EFI/BOOT/grub.cfg", b"x" * (fat_image.cluster_size * 5 + 1))
    assert len(fat_image.free_clusters()) == free - 5
    fat_image.write("EFI/BOOT/grub.cfg", GRUB)
    assert len(fat_image.free_clusters()) == free
    # The slack after the content is zeroed (not left over from before): reproducible images.
    (cluster,) = fat_image.chain(fat_image.find("EFI/BOOT/grub.cfg").first_cluster)
    start = fat_image.data_offset + (cluster - 2) * fat_image.cluster_size
    assert data[start:start + fat_image.cluster_size] == GRUB.ljust(fat_image.cluster_size, b"\0")
    image.write_bytes(data)
    assert mtype(image, "EFI/BOOT/grub.cfg") == GRUB and fsck_clean(image)


def test_no_room_is_a_clear_error_and_changes_nothing(tmp_path: Path) -> None:
    image = make_image(tmp_path, 1440, 12, fill=1_300_000)
    data = bytearray(image.read_bytes())
    fat_image = FatImage(data, "images/efiboot.img")
    free_bytes = len(fat_image.free_clusters()) * fat_image.cluster_size
    with pytest.raises(InputError, match=r"images/efiboot\.img: no room for the new "
                                         r"EFI/BOOT/grub\.cfg .* free"):
        fat_image.write("EFI/BOOT/grub.cfg", b"y" * (free_bytes + 4096))
    assert data == image.read_bytes()


def test_fat32_and_non_fat_are_refused(tmp_path: Path) -> None:
    image = make_image(tmp_path, 40000, 32)
    with pytest.raises(FatError, match="FAT32"):
        FatImage(bytearray(image.read_bytes()))
    with pytest.raises(FatError, match="not a FAT image"):
        FatImage(bytearray(b"\0" * 4096))


def test_missing_paths(image: Path) -> None:
    fat_image = FatImage(bytearray(image.read_bytes()), "efiboot.img")
    with pytest.raises(FatError, match="no EFI/BOOT/nothing.cfg"):
        fat_image.read("EFI/BOOT/nothing.cfg")
    with pytest.raises(FatError, match="is not a folder"):
        fat_image.read("EFI/BOOT/grub.cfg/x")
    with pytest.raises(FatError, match="is a folder"):
        fat_image.write("EFI/BOOT", b"")


@given(st.lists(st.integers(min_value=0, max_value=9000), min_size=1, max_size=4))
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_sequence_of_rewrites(tmp_path_factory: pytest.TempPathFactory,
                                  sizes: list[int]) -> None:
    image = make_image(tmp_path_factory.mktemp("fat"), 1440, 12)
    for round_, size in enumerate(sizes):
        content = bytes((round_ + i) % 256 for i in range(size))
        rewrite(image, "EFI/BOOT/grub.cfg", content)
        assert mtype(image, "EFI/BOOT/grub.cfg") == content
    assert fsck_clean(image)
