"""Runs a command the way the container image and pod spec run it, without a container engine.

    python3 sandbox.py --root DIR --data HOSTDIR:/data --file SRC:DST ... \
        [--seccomp PROFILE.json | --syscalls NAMES.txt] [--uid 10001] [--workdir /data] -- ARGV...

In a new mount namespace (must start as root): a fresh root file system at DIR whose /usr,
/etc, /dev, /sys are the host's, bound read-only, with /proc mounted, /usr/local a read-only
tmpfs holding only the --file binds under it (the image's /usr/local/bin), --file copies under
/etc laid over the host's /etc (a config file), and the --data directory as
the one writable mount; then chroot, drop to --uid/--gid with no supplementary groups and no
capabilities, load a seccomp filter and exec ARGV (looked up on the image's PATH). The
environment is the caller's, passed through as is.

The seccomp filter is either an OCI profile (what `seccompProfile: Localhost` loads: its
`defaultAction`, `syscalls` with actions, `errnoRet` and `args`), or a plain list of allowed
system calls (systemd's SystemCallFilter=). Either way `--default kill` replaces the default
action with killing the process, so a system call missing from the list cannot go unnoticed
as an EPERM the program tolerated: the test then fails on SIGSYS.
"""

import argparse
import ctypes
import ctypes.util
import json
import os
import subprocess
import sys

CLONE_NEWNS = 0x00020000
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_ALLOW = 0x7FFF0000


def scmp_act_errno(errno: int) -> int:
    return 0x00050000 | (errno & 0xFFFF)


SCMP_CMP = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4,
            "SCMP_CMP_GE": 5, "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


class Filter:
    """A libseccomp filter for the native architecture, through ctypes."""

    def __init__(self, default_action: int):
        self.lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2")
        self.lib.seccomp_init.restype = ctypes.c_void_p
        self.lib.seccomp_init.argtypes = [ctypes.c_uint32]
        self.lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        self.lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(ArgCmp)]
        self.lib.seccomp_load.argtypes = [ctypes.c_void_p]
        self.ctx = self.lib.seccomp_init(default_action)
        if not self.ctx:
            raise SystemExit("sandbox: seccomp_init failed")
        self.known = 0

    def add(self, name: str, action: int, args: list[dict] = ()) -> None:
        number = self.lib.seccomp_syscall_resolve_name(name.encode())
        if number < 0:
            return  # not a system call of this architecture (the runtimes skip those too)
        cmps = (ArgCmp * max(len(args), 1))(*[
            ArgCmp(a["index"], SCMP_CMP[a["op"]], a["value"], a.get("valueTwo", 0)) for a in args])
        rc = self.lib.seccomp_rule_add_array(self.ctx, action, number, len(args), cmps)
        if rc != 0:
            raise SystemExit(f"sandbox: seccomp rule for {name}: {os.strerror(-rc)}")
        self.known += 1

    def load(self) -> None:
        rc = self.lib.seccomp_load(self.ctx)
        if rc != 0:
            raise SystemExit(f"sandbox: seccomp_load: {os.strerror(-rc)}")


def profile_filter(path: str, kill_by_default: bool) -> Filter:
    profile = json.load(open(path))
    default = profile["defaultAction"]
    if kill_by_default:
        action = SCMP_ACT_KILL_PROCESS
    elif default == "SCMP_ACT_ERRNO":
        action = scmp_act_errno(profile.get("defaultErrnoRet", 1))
    else:
        raise SystemExit(f"sandbox: unsupported defaultAction {default}")
    seccomp = Filter(action)
    for entry in profile["syscalls"]:
        if entry["action"] == "SCMP_ACT_ALLOW":
            rule = SCMP_ACT_ALLOW
        elif entry["action"] == "SCMP_ACT_ERRNO":
            rule = scmp_act_errno(entry.get("errnoRet", 1))
        else:
            raise SystemExit(f"sandbox: unsupported action {entry['action']}")
        for name in entry["names"]:
            seccomp.add(name, rule, entry.get("args", []))
    return seccomp


def list_filter(path: str) -> Filter:
    """systemd's SystemCallFilter= allow-list: anything else kills the process, as there."""
    seccomp = Filter(SCMP_ACT_KILL_PROCESS)
    for name in open(path).read().split():
        seccomp.add(name, SCMP_ACT_ALLOW)
    return seccomp


def run(*argv: str) -> None:
    subprocess.run(argv, check=True)


def build_root(root: str, data: tuple[str, str], files: list[tuple[str, str]], stage: str) -> None:
    run("mount", "--make-rprivate", "/")
    run("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", root)
    os.mkdir(f"{root}/sys")
    run("mount", "--rbind", "/sys", f"{root}/sys")
    run("mount", "-o", "remount,bind,ro", f"{root}/sys")
    os.mkdir(f"{root}/usr")
    run("mount", "--rbind", "/usr", f"{root}/usr")
    run("mount", "-o", "remount,bind,ro", f"{root}/usr")
    # /etc: the host's, with the --file binds under /etc laid over it (a read-only overlay).
    os.mkdir(f"{root}/etc")
    etc_files = [(src, dst) for src, dst in files if dst.startswith("/etc/")]
    if etc_files:
        for src, dst in etc_files:
            os.makedirs(os.path.dirname(f"{stage}{dst}"), exist_ok=True)
            subprocess.run(["cp", src, f"{stage}{dst}"], check=True)
        run("mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={stage}/etc:/etc", f"{root}/etc")
    else:
        run("mount", "--rbind", "/etc", f"{root}/etc")
        run("mount", "-o", "remount,bind,ro", f"{root}/etc")
    os.mkdir(f"{root}/dev")
    run("mount", "--rbind", "/dev", f"{root}/dev")
    os.mkdir(f"{root}/proc")
    run("mount", "-t", "proc", "proc", f"{root}/proc")
    # Debian's merged /usr: /bin, /lib, /lib64, /sbin are links into it, as in the image.
    for link in ("bin", "lib", "lib64", "sbin"):
        if os.path.islink(f"/{link}"):
            os.symlink(os.readlink(f"/{link}"), f"{root}/{link}")
    run("mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", f"{root}/usr/local")
    for src, dst in files:
        if not dst.startswith("/usr/local/"):
            continue
        target = f"{root}{dst}"
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "w").close()
        run("mount", "--bind", src, target)
        run("mount", "-o", "remount,bind,ro", target)
    run("mount", "-o", "remount,ro", f"{root}/usr/local")
    os.makedirs(f"{root}{data[1]}")
    run("mount", "--bind", data[0], f"{root}{data[1]}")
    run("mount", "-o", "remount,ro", root)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--stage", help="a scratch directory for --file binds outside /usr/local")
    parser.add_argument("--data", required=True, help="HOSTDIR:/data")
    parser.add_argument("--file", action="append", default=[], help="SRC:DST, read-only")
    parser.add_argument("--uid", type=int, default=10001)
    parser.add_argument("--gid", type=int, default=10001)
    parser.add_argument("--workdir", default="/data")
    parser.add_argument("--seccomp", help="an OCI seccomp profile (JSON)")
    parser.add_argument("--syscalls", help="a file of allowed system call names")
    parser.add_argument("--default", choices=["profile", "kill"], default="profile")
    parser.add_argument("argv", nargs="+")
    args = parser.parse_args()

    if args.seccomp:
        seccomp = profile_filter(args.seccomp, args.default == "kill")
    elif args.syscalls:
        seccomp = list_filter(args.syscalls)
    else:
        seccomp = None
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        raise SystemExit(f"sandbox: unshare: {os.strerror(ctypes.get_errno())}")
    data = tuple(args.data.split(":", 1))
    files = [tuple(f.split(":", 1)) for f in args.file]
    for _, dst in files:
        if not dst.startswith(("/usr/local/", "/etc/")):
            raise SystemExit(f"sandbox: --file {dst}: only under /usr/local or /etc")
    build_root(args.root, data, files, args.stage or f"{args.root}.stage")
    os.chroot(args.root)
    os.chdir(args.workdir)
    os.setgroups([])
    os.setgid(args.gid)
    os.setuid(args.uid)  # from root to another uid: every capability is gone
    if seccomp is not None:
        seccomp.load()
    env = dict(os.environ, PATH=IMAGE_PATH)
    os.execvpe(args.argv[0], args.argv, env)


if __name__ == "__main__":
    sys.exit(main())
