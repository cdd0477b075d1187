//! The kernel features the datapath uses, each probed by the agent at start (never
//! assumed from the kernel's version), and the datapaths that need them. The agent
//! records what it found in [`crate::AgentInfo`], a bit per feature and per program, so
//! `proxyctl status` and /metrics can say by name what this node lost and why.
//!
//! The discriminants are those bits: stable, append only.

/// A helper, attach type or link type the programs use.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum KernelFeature {
    /// `bpf_set_retval` in cgroup sock_addr programs.
    SetRetval = 0,
    /// `bpf_get_netns_cookie` in cgroup sock_addr programs.
    NetnsCookie = 1,
    /// `bpf_get_socket_cookie` in cgroup sock_addr programs.
    SocketCookie = 2,
    /// `bpf_fib_lookup` in tc programs.
    FibLookup = 3,
    /// `bpf_redirect_neigh` in tc programs.
    RedirectNeigh = 4,
    /// `bpf_csum_diff` in tc programs.
    CsumDiff = 5,
    /// `bpf_skb_change_tail` in tc programs.
    SkbChangeTail = 6,
    /// `bpf_skb_adjust_room` in tc programs.
    SkbAdjustRoom = 7,
    /// TCX links for tc programs.
    Tcx = 8,
    /// `bpf_sk_storage_get` in cgroup sock_addr programs (socket-local storage).
    SocketStorage = 9,
}

/// What a missing feature costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Without {
    /// Another variant or mechanism takes over; the text says what changes.
    Fallback(&'static str),
    /// The datapath that needs it is not loaded.
    Loses(Datapath),
}

/// The two datapaths, loaded and lost independently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Datapath {
    /// The cgroup socket programs: ClusterIPs and every frontend reached from the node.
    Socket,
    /// The tc programs: NodePort, ExternalIP and LoadBalancer traffic from outside.
    External,
}

impl Datapath {
    pub const fn name(self) -> &'static str {
        match self {
            Datapath::Socket => "socket load balancer",
            Datapath::External => "traffic from outside the node (tc)",
        }
    }
}

impl KernelFeature {
    pub const ALL: [KernelFeature; 10] = [
        KernelFeature::SetRetval,
        KernelFeature::NetnsCookie,
        KernelFeature::SocketCookie,
        KernelFeature::FibLookup,
        KernelFeature::RedirectNeigh,
        KernelFeature::CsumDiff,
        KernelFeature::SkbChangeTail,
        KernelFeature::SkbAdjustRoom,
        KernelFeature::Tcx,
        KernelFeature::SocketStorage,
    ];

    pub const fn bit(self) -> u32 {
        1 << self as u32
    }

    /// The name operators know it by.
    pub const fn name(self) -> &'static str {
        match self {
            KernelFeature::SetRetval => "bpf_set_retval",
            KernelFeature::NetnsCookie => "bpf_get_netns_cookie",
            KernelFeature::SocketCookie => "bpf_get_socket_cookie",
            KernelFeature::FibLookup => "bpf_fib_lookup",
            KernelFeature::RedirectNeigh => "bpf_redirect_neigh",
            KernelFeature::CsumDiff => "bpf_csum_diff",
            KernelFeature::SkbChangeTail => "bpf_skb_change_tail",
            KernelFeature::SkbAdjustRoom => "bpf_skb_adjust_room",
            KernelFeature::Tcx => "tcx_links",
            KernelFeature::SocketStorage => "bpf_sk_storage_get",
        }
    }

    /// The upstream Linux release that brought it (to the program type we use it in).
    pub const fn since(self) -> &'static str {
        match self {
            KernelFeature::SetRetval => "5.18",
            KernelFeature::NetnsCookie => "5.7",
            KernelFeature::SocketCookie => "4.12",
            KernelFeature::FibLookup => "4.18",
            KernelFeature::RedirectNeigh => "5.10",
            KernelFeature::CsumDiff => "4.6",
            KernelFeature::SkbChangeTail => "4.9",
            KernelFeature::SkbAdjustRoom => "5.2",
            KernelFeature::Tcx => "6.6",
            // Commit fb85c4a730af ("bpf: export bpf_sock for BPF_PROG_TYPE_CGROUP_SOCK_ADDR
            // prog type"), merged for 5.3; the map type itself is 5.2.
            KernelFeature::SocketStorage => "5.3",
        }
    }

    /// What the node does without it.
    pub const fn without(self) -> Without {
        match self {
            KernelFeature::SetRetval => Without::Fallback(
                "a connect or send to a Service without endpoints fails with EPERM instead of ECONNREFUSED",
            ),
            KernelFeature::Tcx => Without::Fallback(
                "the tc programs are attached as clsact filters through netlink, replaced in place on restart",
            ),
            KernelFeature::SocketStorage => Without::Fallback(
                "connect4 records each translation in the shared reverse-translation LRU map (EPX_RNAT_V1) instead of on the socket: a slower connect, and a full map forgets the oldest sockets' frontends",
            ),
            KernelFeature::NetnsCookie | KernelFeature::SocketCookie => {
                Without::Loses(Datapath::Socket)
            }
            KernelFeature::FibLookup
            | KernelFeature::RedirectNeigh
            | KernelFeature::CsumDiff
            | KernelFeature::SkbChangeTail
            | KernelFeature::SkbAdjustRoom => Without::Loses(Datapath::External),
        }
    }
}

/// Which attachment the tc programs have ([`crate::AgentInfo::tc_attach`]).
pub const TC_ATTACH_NONE: u32 = 0;
pub const TC_ATTACH_TCX: u32 = 1;
pub const TC_ATTACH_NETLINK: u32 = 2;
