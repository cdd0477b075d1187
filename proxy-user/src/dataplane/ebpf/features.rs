//! What this kernel offers the datapath, probed at start, never assumed from its
//! version (distributions backport; a 5.15 may have what 6.1 has). Each helper is probed
//! the way libbpf does it, in the program type that calls it: a two-instruction program
//! calling the helper is loaded and the verifier's answer read. TCX links are probed by
//! asking for one on an interface that cannot exist (see [`probe_tcx`]).
//!
//! What a missing feature costs is [`KernelFeature::without`]: a fallback, or the loss
//! of the one datapath that needs it.

use std::os::fd::{AsRawFd as _, BorrowedFd};

use aya::{
    programs::ProgramType,
    sys::{BpfHelper, is_helper_supported},
};
use proxy_common::features::{Datapath, KernelFeature, Without};

/// The probes' results: a bit per [`KernelFeature`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    pub probed: u32,
    pub present: u32,
}

impl Features {
    /// Probes every helper the programs call. TCX is probed later, once a tc program is
    /// loaded ([`Features::probe_tcx`]).
    pub fn probe_helpers() -> Self {
        let mut features = Self::default();
        for feature in KernelFeature::ALL {
            let Some((program_type, helper)) = helper_of(feature) else {
                continue;
            };
            // A probe that cannot run at all (no BPF syscall) reads as "missing": the
            // program that needs the helper then fails to load and says why itself.
            let present = is_helper_supported(program_type, helper).unwrap_or(false);
            features.record(feature, present);
        }
        features
    }

    pub fn record(&mut self, feature: KernelFeature, present: bool) {
        self.probed |= feature.bit();
        if present {
            self.present |= feature.bit();
        } else {
            self.present &= !feature.bit();
        }
    }

    /// Marks `features` missing, whatever was found (`--assume-missing`).
    pub fn assume_missing(&mut self, features: &[KernelFeature]) {
        for feature in features {
            if self.probed & feature.bit() != 0 {
                self.record(*feature, false);
            }
        }
    }

    pub fn has(&self, feature: KernelFeature) -> bool {
        self.present & feature.bit() != 0
    }

    /// Probed and found missing.
    pub fn missing(&self) -> impl Iterator<Item = KernelFeature> + '_ {
        KernelFeature::ALL
            .into_iter()
            .filter(|f| self.probed & f.bit() != 0 && !self.has(*f))
    }

    /// The missing features `path` cannot do without.
    pub fn missing_for(&self, path: Datapath) -> Vec<KernelFeature> {
        self.missing()
            .filter(|f| f.without() == Without::Loses(path))
            .collect()
    }

    /// Probes TCX with `tc_program`, a loaded tc program, and records the answer.
    pub fn probe_tcx(&mut self, tc_program: BorrowedFd<'_>) {
        self.record(KernelFeature::Tcx, probe_tcx(tc_program));
    }
}

/// `a, b (Linux 5.18)` for a log line.
pub fn describe(features: &[KernelFeature]) -> String {
    features
        .iter()
        .map(|f| format!("{} (Linux {})", f.name(), f.since()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The program type a helper is called from, and its id; `None` for what is not a
/// helper.
fn helper_of(feature: KernelFeature) -> Option<(ProgramType, BpfHelper)> {
    use BpfHelper as H;
    let sock = ProgramType::CgroupSockAddr;
    let tc = ProgramType::SchedClassifier;
    Some(match feature {
        KernelFeature::SetRetval => (sock, H::BPF_FUNC_set_retval),
        KernelFeature::NetnsCookie => (sock, H::BPF_FUNC_get_netns_cookie),
        KernelFeature::SocketCookie => (sock, H::BPF_FUNC_get_socket_cookie),
        KernelFeature::SocketStorage => (sock, H::BPF_FUNC_sk_storage_get),
        KernelFeature::FibLookup => (tc, H::BPF_FUNC_fib_lookup),
        KernelFeature::RedirectNeigh => (tc, H::BPF_FUNC_redirect_neigh),
        KernelFeature::CsumDiff => (tc, H::BPF_FUNC_csum_diff),
        KernelFeature::SkbChangeTail => (tc, H::BPF_FUNC_skb_change_tail),
        KernelFeature::SkbAdjustRoom => (tc, H::BPF_FUNC_skb_adjust_room),
        KernelFeature::Tcx => return None,
    })
}

const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_TCX_INGRESS: u32 = 46;

/// `bpf_attr` for BPF_LINK_CREATE, as far as a TCX probe fills it.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    relative_fd: u32,
    _pad: u32,
    expected_revision: u64,
    _rest: [u64; 4],
}

/// Asks for a TCX link on interface index 0, which no interface has. A kernel that
/// knows TCX (6.6) looks the interface up and answers ENODEV; one that does not refuses
/// the attach type with EINVAL. Nothing is attached either way.
fn probe_tcx(tc_program: BorrowedFd<'_>) -> bool {
    let attr = LinkCreateAttr {
        prog_fd: tc_program.as_raw_fd() as u32,
        target_ifindex: 0,
        attach_type: BPF_TCX_INGRESS,
        ..Default::default()
    };
    // SAFETY: attr is a valid, zero-padded bpf_attr prefix of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            &attr as *const LinkCreateAttr,
            size_of::<LinkCreateAttr>(),
        )
    };
    if rc >= 0 {
        // Cannot happen (no interface 0), but a link we did not want must not stay.
        // SAFETY: rc is a file descriptor the kernel just gave us.
        unsafe { libc::close(rc as i32) };
        return true;
    }
    std::io::Error::last_os_error().raw_os_error() == Some(libc::ENODEV)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_helper_costs_only_its_own_datapath() {
        let mut f = Features::default();
        for feature in KernelFeature::ALL {
            f.record(feature, true);
        }
        f.record(KernelFeature::SetRetval, false);
        f.record(KernelFeature::RedirectNeigh, false);
        assert_eq!(
            f.missing().collect::<Vec<_>>(),
            [KernelFeature::SetRetval, KernelFeature::RedirectNeigh]
        );
        // bpf_set_retval has a fallback: the socket path keeps everything it needs.
        assert!(f.missing_for(Datapath::Socket).is_empty());
        assert_eq!(
            f.missing_for(Datapath::External),
            [KernelFeature::RedirectNeigh]
        );
        assert_eq!(
            describe(&f.missing().collect::<Vec<_>>()),
            "bpf_set_retval (Linux 5.18), bpf_redirect_neigh (Linux 5.10)"
        );
    }

    #[test]
    fn what_was_not_probed_is_not_missing() {
        let mut f = Features::default();
        f.record(KernelFeature::SetRetval, true);
        assert_eq!(f.missing().count(), 0);
        assert!(!f.has(KernelFeature::Tcx));
    }

    #[test]
    fn every_feature_but_tcx_is_a_helper() {
        for feature in KernelFeature::ALL {
            assert_eq!(
                helper_of(feature).is_none(),
                feature == KernelFeature::Tcx,
                "{feature:?}"
            );
        }
    }
}
