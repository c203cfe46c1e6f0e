//! The seccomp filter of build commands, as classic BPF generated here (no libseccomp).
//!
//! A deny list over the kernel's default: the calls that change the machine, its mounts, its
//! namespaces or another process's memory answer `EPERM`; `clone3` answers `ENOSYS` (its flags sit in
//! memory a filter cannot read, and libc then falls back to `clone`, whose flags are checked);
//! `clone` and `unshare` with `CLONE_NEWUSER` answer `EPERM`. A call of another architecture (a
//! 32-bit binary, the x32 ABI) kills the process, so the numbers below cannot be sidestepped.
//!
//! The program is the kernel's `struct sock_filter` array in native byte order, which is what
//! `bwrap --seccomp FD` reads.

/// System calls that answer `EPERM`: mounts and the root, other processes' memory, the kernel's
/// modules, keys, BPF and perf, namespaces, the clock, swap, reboot, I/O ports, io_uring (whose
/// operations a filter does not see).
const DENIED: &[libc::c_long] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_process_madvise,
    libc::SYS_pidfd_getfd,
    libc::SYS_kcmp,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_setns,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_syslog,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_sethostname,
    libc::SYS_setdomainname,
    libc::SYS_userfaultfd,
    libc::SYS_fanotify_init,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_vhangup,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_uselib,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ustat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_sysfs,
    #[cfg(target_arch = "x86_64")]
    libc::SYS__sysctl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_lookup_dcookie,
];

/// The names of [`DENIED`] for the docs and messages (same order, x86_64 extras last).
pub const DENIED_NAMES: &[&str] = &[
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "process_madvise",
    "pidfd_getfd",
    "kcmp",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "open_by_handle_at",
    "name_to_handle_at",
    "setns",
    "swapon",
    "swapoff",
    "reboot",
    "syslog",
    "acct",
    "quotactl",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
    "userfaultfd",
    "fanotify_init",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "vhangup",
    "iopl",
    "ioperm",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "lookup_dcookie",
];

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
const LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS (0x20)
const JMP_JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
const JMP_JGE_K: u16 = 0x05 | 0x30; // BPF_JMP | BPF_JGE | BPF_K
const JMP_JSET_K: u16 = 0x05 | 0x40; // BPF_JMP | BPF_JSET | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K

const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

// Offsets in struct seccomp_data: nr, arch, instruction pointer, args[6].
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
/// The low 32 bits of args[0] (little-endian; flags fit in them).
#[cfg(target_endian = "little")]
const OFF_ARG0_LO: u32 = 16;
#[cfg(target_endian = "big")]
const OFF_ARG0_LO: u32 = 20;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7; // AUDIT_ARCH_AARCH64

/// x32 ABI calls carry this bit in their number on x86_64.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

#[derive(Clone, Copy)]
struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

fn stmt(code: u16, k: u32) -> Insn {
    Insn {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
    Insn { code, jt, jf, k }
}

fn errno(e: i32) -> u32 {
    RET_ERRNO | (e as u32 & 0xffff)
}

/// The filter as `struct sock_filter` bytes in native order.
pub fn program() -> Vec<u8> {
    let mut p = vec![
        stmt(LD_W_ABS, OFF_ARCH),
        jump(JMP_JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(RET_K, RET_KILL_PROCESS),
        stmt(LD_W_ABS, OFF_NR),
    ];
    if cfg!(target_arch = "x86_64") {
        p.push(jump(JMP_JGE_K, X32_SYSCALL_BIT, 0, 1));
        p.push(stmt(RET_K, RET_KILL_PROCESS));
    }
    for &nr in DENIED {
        p.push(jump(JMP_JEQ_K, nr as u32, 0, 1));
        p.push(stmt(RET_K, errno(libc::EPERM)));
    }
    p.push(jump(JMP_JEQ_K, libc::SYS_clone3 as u32, 0, 1));
    p.push(stmt(RET_K, errno(libc::ENOSYS)));
    for nr in [libc::SYS_clone, libc::SYS_unshare] {
        // Matched: look at the flags, then decide (no other rule covers these calls).
        p.push(jump(JMP_JEQ_K, nr as u32, 0, 4));
        p.push(stmt(LD_W_ABS, OFF_ARG0_LO));
        p.push(jump(JMP_JSET_K, libc::CLONE_NEWUSER as u32, 0, 1));
        p.push(stmt(RET_K, errno(libc::EPERM)));
        p.push(stmt(RET_K, RET_ALLOW));
    }
    p.push(stmt(RET_K, RET_ALLOW));
    let mut out = Vec::with_capacity(p.len() * 8);
    for i in p {
        out.extend_from_slice(&i.code.to_ne_bytes());
        out.push(i.jt);
        out.push(i.jf);
        out.extend_from_slice(&i.k.to_ne_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt as _;
    use std::process::Command;

    #[test]
    fn names_match_numbers() {
        assert_eq!(
            DENIED.len(),
            DENIED_NAMES.len() - if cfg!(target_arch = "x86_64") { 0 } else { 7 }
        );
        let p = program();
        assert_eq!(p.len() % 8, 0);
        assert!(p.len() / 8 < 4096, "BPF_MAXINSNS");
    }

    /// Runs `argv` with the filter loaded (as the test's user, root in CI) and returns its status and
    /// output.
    #[allow(unsafe_code)]
    fn filtered(argv: &[&str]) -> (bool, String) {
        let prog = program();
        let mut c = Command::new(argv[0]);
        c.args(&argv[1..]);
        // SAFETY: pre_exec runs between fork and exec; it only calls prctl(2) on memory prepared
        // before the fork.
        unsafe {
            c.pre_exec(move || {
                let fprog = libc::sock_fprog {
                    len: (prog.len() / 8) as u16,
                    filter: prog.as_ptr() as *mut libc::sock_filter,
                };
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::prctl(
                        libc::PR_SET_SECCOMP,
                        libc::SECCOMP_MODE_FILTER,
                        &fprog as *const libc::sock_fprog,
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = c.output().unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    #[test]
    fn filter_denies_namespaces_mounts_and_chroot_but_runs_programs() {
        let (ok, out) = filtered(&["/bin/sh", "-c", "echo hello; ls / >/dev/null"]);
        assert!(ok && out.contains("hello"), "{out}");
        // Threads: glibc's clone3 gets ENOSYS and falls back to clone.
        let (ok, out) = filtered(&[
            "python3",
            "-c",
            "import threading; t = threading.Thread(target=print, args=('in a thread',)); t.start(); t.join()",
        ]);
        assert!(ok && out.contains("in a thread"), "{out}");
        let (ok, out) = filtered(&["unshare", "--user", "true"]);
        assert!(!ok && out.contains("Operation not permitted"), "{out}");
        let (ok, out) = filtered(&["unshare", "--mount", "true"]);
        assert!(
            !ok,
            "unshare --mount as root is not a new userns, but mount: {out}"
        );
        let (ok, out) = filtered(&["chroot", "/", "true"]);
        assert!(!ok && out.contains("Operation not permitted"), "{out}");
    }
}
