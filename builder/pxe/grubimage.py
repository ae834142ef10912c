"""What a GRUB EFI image can do: the names of the modules built into it.

grub-mkimage appends a module area to the image: a header (magic "mimg", the offset of the
first entry and the area's size), then entries of (type, size) each followed by the data;
type 0 is an ELF module, whose `.modname` section holds its name. CentOS's signed
grubx64.efi is built the same way. Searching the image for a command's name instead is not
enough: Debian's `linux` module mentions "linuxefi" in a message without having the command.
"""

from __future__ import annotations

import struct

MAGIC = b"mimg\0\0\0\0"  # grub_module_info64: magic, padding, offset, size
OBJ_TYPE_ELF = 0


def module_names(image: bytes) -> list[str] | None:
    """The built-in modules, in image order; None if the image has no module area."""
    start = image.find(MAGIC)
    if start < 0 or start + 24 > len(image):
        return None
    _magic, _padding, offset, size = struct.unpack_from("<IIQQ", image, start)
    position, end = start + offset, min(start + size, len(image))
    names = []
    while position + 8 <= end:
        kind, length = struct.unpack_from("<II", image, position)
        if length < 8:
            break
        if kind == OBJ_TYPE_ELF:
            name = _elf_module_name(image[position + 8:position + length])
            if name:
                names.append(name)
        position += length
    return names


def _elf_module_name(elf: bytes) -> str | None:
    """The `.modname` section's text of an ELF64 little-endian object, or None."""
    try:
        if elf[:4] != b"\x7fELF":
            return None
        (table,) = struct.unpack_from("<Q", elf, 0x28)
        entry_size, count, names_index = struct.unpack_from("<HHH", elf, 0x3A)

        def section(index: int) -> tuple[int, int, int]:
            name, _kind, _flags, _address, offset, size = struct.unpack_from(
                "<IIQQQQ", elf, table + index * entry_size)
            return name, offset, size

        _, names_offset, _ = section(names_index)
        for index in range(count):
            name, offset, size = section(index)
            if elf[names_offset + name:names_offset + name + 9] == b".modname\0":
                return elf[offset:offset + size].split(b"\0")[0].decode("ascii")
    except (struct.error, UnicodeDecodeError):
        return None
    return None


def has_linuxefi(image: bytes) -> bool:
    """True if the GRUB image has the linuxefi/initrdefi commands (CentOS's GRUB, or another
    built with the linuxefi module)."""
    names = module_names(image)
    if names is None:
        # Not a grub-mkimage layout we know: the command's companion name is the best hint
        # (no message of upstream GRUB mentions initrdefi).
        return b"initrdefi\0" in image
    return "linuxefi" in names
