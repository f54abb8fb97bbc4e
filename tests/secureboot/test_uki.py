from __future__ import annotations

import json
from pathlib import Path

import pefile
import pytest
from click.testing import CliRunner

from bootkit.cli import main
from bootkit.errors import BootkitError
from bootkit.formats import bzimage
from bootkit.secureboot import uki

pytestmark = pytest.mark.skipif(not uki.DEFAULT_STUB.is_file(),
                                reason="systemd's EFI stub (systemd-boot-efi) is not installed")

OS_RELEASE = b'NAME="Test OS"\nID=testos\nVERSION_ID=1\n'


def fake_bzimage(version: str = "6.9.0-test (builder@host) #1 SMP", size: int = 20000) -> bytes:
    """A blob with a valid x86 setup header whose kernel_version points at `version`."""
    image = bytearray(size)
    pointer = 0x300
    header = bzimage.SetupHeader.build({
        "setup_sects": 4, "root_flags": 1, "syssize": 0, "ram_size": 0, "vid_mode": 0xFFFF,
        "root_dev": 0, "jump": 0x66EB, "version": 0x020F, "realmode_swtch": 0,
        "start_sys_seg": 0x1000, "kernel_version": pointer,
    })
    image[bzimage.SETUP_HEADER_OFFSET : bzimage.SETUP_HEADER_OFFSET + len(header)] = header
    start = bzimage.KERNEL_VERSION_BASE + pointer
    image[start : start + len(version) + 1] = version.encode() + b"\0"
    image[0x2000:0x2010] = b"kernel-body-mark"
    return bytes(image)


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    paths = {
        "linux": tmp_path / "vmlinuz",
        "initrd1": tmp_path / "early.cpio",
        "initrd2": tmp_path / "main.cpio",
        "osrel": tmp_path / "os-release",
    }
    paths["linux"].write_bytes(fake_bzimage())
    paths["initrd1"].write_bytes(b"early-archive")  # 13 bytes: needs padding
    paths["initrd2"].write_bytes(b"main-archive-data")
    paths["osrel"].write_bytes(OS_RELEASE)
    return paths


def build(tmp_path: Path, inputs: dict[str, Path], **kwargs) -> Path:
    out = tmp_path / "out.efi"
    uki.build_uki(out, inputs["linux"], [inputs["initrd1"], inputs["initrd2"]],
                  "console=ttyS0 quiet\n", OS_RELEASE, **kwargs)
    return out


def section_data(pe: pefile.PE, name: str) -> bytes:
    (header,) = [s for s in pe.sections if s.Name.rstrip(b"\0").decode() == name]
    return header.get_data()[: header.Misc_VirtualSize]


def test_sections_hold_the_payload_in_order(tmp_path: Path, inputs: dict[str, Path]) -> None:
    out = build(tmp_path, inputs)
    pe = pefile.PE(str(out))
    names = [s.Name.rstrip(b"\0").decode() for s in pe.sections]
    assert names[-5:] == [".osrel", ".cmdline", ".uname", ".initrd", ".linux"]
    assert section_data(pe, ".osrel") == OS_RELEASE
    assert section_data(pe, ".cmdline") == b"console=ttyS0 quiet"
    assert section_data(pe, ".uname") == b"6.9.0-test"
    assert section_data(pe, ".initrd") == b"early-archive\0\0\0main-archive-data"
    assert section_data(pe, ".linux") == inputs["linux"].read_bytes()


def test_layout_is_aligned_contiguous_and_headers_are_updated(
    tmp_path: Path, inputs: dict[str, Path]
) -> None:
    stub = pefile.PE(str(uki.DEFAULT_STUB))
    out = build(tmp_path, inputs)
    data = out.read_bytes()
    pe = pefile.PE(data=data)
    opt = pe.OPTIONAL_HEADER
    assert pe.FILE_HEADER.NumberOfSections == stub.FILE_HEADER.NumberOfSections + 5
    previous_end, previous_vma_end = None, 0
    for i, s in enumerate(pe.sections):
        if i >= stub.FILE_HEADER.NumberOfSections:  # the stub's own may be laid out loosely
            assert s.VirtualAddress % opt.SectionAlignment == 0
            assert s.PointerToRawData % opt.FileAlignment == 0
            assert s.SizeOfRawData % opt.FileAlignment == 0
        assert s.VirtualAddress >= previous_vma_end
        if previous_end is not None:
            assert s.PointerToRawData == previous_end  # no unsigned gaps between sections
        previous_end = s.PointerToRawData + s.SizeOfRawData
        previous_vma_end = s.VirtualAddress + s.Misc_VirtualSize
    assert len(data) == previous_end
    last = pe.sections[-1]
    assert opt.SizeOfImage == -(-(last.VirtualAddress + last.Misc_VirtualSize)
                                // opt.SectionAlignment) * opt.SectionAlignment
    added = sum(s.SizeOfRawData for s in pe.sections[-5:])
    assert opt.SizeOfInitializedData == stub.OPTIONAL_HEADER.SizeOfInitializedData + added
    assert opt.CheckSum == pe.generate_checksum()
    assert pe.FILE_HEADER.PointerToSymbolTable == 0
    # The stub's own code is untouched.
    text = stub.sections[0]
    assert data[text.PointerToRawData : text.PointerToRawData + text.SizeOfRawData] == (
        text.get_data())


def test_uname_override_and_cli_inspect(tmp_path: Path, inputs: dict[str, Path]) -> None:
    out = tmp_path / "cli.efi"
    result = CliRunner().invoke(main, [
        "uki", "build", "--linux", str(inputs["linux"]), "--initrd", str(inputs["initrd2"]),
        "--cmdline", "root=LABEL=x rw", "--os-release", str(inputs["osrel"]),
        "--uname", "1.2.3-custom", "-o", str(out),
    ])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["uki", "inspect", "--json", str(out)])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["cmdline"] == "root=LABEL=x rw"
    assert info["uname"] == "1.2.3-custom"
    assert info["os_release"] == OS_RELEASE.decode()
    assert info["signed"] is False
    linux = info["sections"][-1]
    assert linux["name"] == ".linux" and linux["size"] == inputs["linux"].stat().st_size
    text = CliRunner().invoke(main, ["uki", "inspect", str(out)]).output
    assert "cmdline: root=LABEL=x rw" in text and ".initrd" in text


def test_real_kernel_version_is_read_from_the_setup_header(test_kernel: Path) -> None:
    vmlinuz = sorted((test_kernel / "boot").glob("vmlinuz-*"))[-1]
    expected = vmlinuz.name.removeprefix("vmlinuz-")
    assert bzimage.kernel_version(vmlinuz.read_bytes()) == expected


def test_real_kernel_uki(tmp_path: Path, test_kernel: Path) -> None:
    vmlinuz = sorted((test_kernel / "boot").glob("vmlinuz-*"))[-1]
    out = tmp_path / "real.efi"
    uki.build_uki(out, vmlinuz, [], "console=ttyS0", OS_RELEASE)
    info = uki.inspect_uki(out)
    assert info.uname == vmlinuz.name.removeprefix("vmlinuz-")
    assert ".initrd" not in [s.name for s in info.sections]


def test_refuses_a_signed_stub(tmp_path: Path, inputs: dict[str, Path]) -> None:
    data = bytearray(uki.DEFAULT_STUB.read_bytes())
    entry = pefile.PE(data=bytes(data)).OPTIONAL_HEADER.DATA_DIRECTORY[4].get_file_offset()
    # A certificate table at the end of the file, as a signing tool leaves it.
    table = len(data) + (-len(data) % 8)
    data.extend(bytes(table - len(data)) + (16).to_bytes(4, "little") + b"\0\x02\x02\0" + bytes(8))
    data[entry : entry + 8] = table.to_bytes(4, "little") + (16).to_bytes(4, "little")
    signed_stub = tmp_path / "signed.stub"
    signed_stub.write_bytes(data)
    with pytest.raises(BootkitError, match="already signed"):
        build(tmp_path, inputs, stub=signed_stub)
    assert not (tmp_path / "out.efi").exists()


def test_refuses_a_stub_without_header_room(tmp_path: Path, inputs: dict[str, Path]) -> None:
    data = bytearray(uki.DEFAULT_STUB.read_bytes())
    pe = pefile.PE(data=bytes(data))
    table_end = pe.sections[-1].get_file_offset() + 40
    # Leave room for two headers only.
    data[table_end + 80 : pe.OPTIONAL_HEADER.SizeOfHeaders] = b"\xff" * (
        pe.OPTIONAL_HEADER.SizeOfHeaders - table_end - 80)
    crowded = tmp_path / "crowded.stub"
    crowded.write_bytes(data)
    with pytest.raises(BootkitError, match="room for 2 more section headers, 5 are needed"):
        build(tmp_path, inputs, stub=crowded)


def test_section_names_are_limited_to_eight_bytes() -> None:
    with pytest.raises(BootkitError, match="at most 8 bytes"):
        uki.Section(".toolongname", b"x")
    assert uki.Section(".1234567", b"x").header_name == b".1234567"
    assert uki.Section(".osrel", b"x").header_name == b".osrel\0\0"


def test_refuses_a_kernel_that_is_not_a_bzimage(tmp_path: Path, inputs: dict[str, Path]) -> None:
    inputs["linux"].write_bytes(b"\0" * 4096)
    with pytest.raises(BootkitError, match="not an x86 bzImage"):
        build(tmp_path, inputs)


def test_sbat_is_merged_into_the_stubs_section(tmp_path: Path, inputs: dict[str, Path]) -> None:
    out = build(tmp_path, inputs, sbat="bk,1,B,bk,1,u\n")
    pe = pefile.PE(str(out))
    sbat_sections = [s for s in pe.sections if s.Name.rstrip(b"\0") == b".sbat"]
    assert len(sbat_sections) == 1  # shim refuses images with two
    text = section_data(pe, ".sbat").decode()
    lines = text.splitlines()
    assert lines[0].startswith("sbat,1,") and lines[-1] == "bk,1,B,bk,1,u"
    assert any(line.startswith("systemd,") for line in lines)
    assert pe.OPTIONAL_HEADER.CheckSum == pe.generate_checksum()


def test_sbat_too_large_for_the_stub_is_refused(tmp_path: Path, inputs: dict[str, Path]) -> None:
    with pytest.raises(BootkitError, match=r"\.sbat section has room for"):
        build(tmp_path, inputs, sbat="component," * 40 + "\n")


def test_merge_sbat_keeps_one_header_and_no_duplicates() -> None:
    merged = uki.merge_sbat("sbat,1,x\na,1\n", "a,1\nb,2\n", "sbat,1,y\nc,3")
    assert merged == f"{uki.SBAT_HEADER}\na,1\nb,2\nc,3\n"

