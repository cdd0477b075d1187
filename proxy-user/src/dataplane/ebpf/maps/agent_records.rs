//! What the agent records in the maps besides frontends: the interfaces the tc programs
//! are attached to (with their source-NAT addresses of both families), the programs'
//! settings, and who programs the maps.

use proxy_common::{AgentInfo, DatapathConfig, IfaceInfo, names};

use super::{Maps, MapsError};
use crate::dataplane::ebpf::interfaces::Interface;

impl Maps {
    /// The interfaces the tc programs are attached to, and their source-NAT addresses;
    /// entries of interfaces no longer given are removed.
    pub fn set_interfaces(&mut self, interfaces: &[Interface]) -> Result<(), MapsError> {
        let stale: Vec<u32> = self
            .ifaces
            .keys()
            .filter_map(Result::ok)
            .filter(|i| !interfaces.iter().any(|w| w.ifindex == *i))
            .collect();
        for ifindex in stale {
            let _ = self.ifaces.remove(&ifindex);
        }
        for i in interfaces {
            let info = IfaceInfo {
                addr: i.addr.map_or(0, |a| u32::from_ne_bytes(a.octets())),
                addr6: i
                    .addr6
                    .map_or([0; 4], crate::dataplane::ebpf::convert::addr_of),
            };
            self.insert(names::MAP_IFACES, |m| m.ifaces.insert(i.ifindex, info, 0))?;
        }
        Ok(())
    }

    /// The programs' settings (UDP flow timeouts), in force from the next datagram.
    pub fn write_config(&mut self, config: &DatapathConfig) -> Result<(), MapsError> {
        self.insert(names::MAP_CONFIG, |m| m.config.set(0, config, 0))
    }

    /// The settings in force (the defaults where the agent left a field unset).
    pub fn config(&self) -> DatapathConfig {
        self.config.get(&0, 0).unwrap_or_default().or_defaults()
    }

    /// Records who programs the maps (for `proxyctl status`).
    pub fn write_agent_info(&mut self, info: &AgentInfo) -> Result<(), MapsError> {
        self.insert(names::MAP_AGENT, |m| m.agent.set(0, info, 0))
    }

    /// Who programs the maps; `None` before an agent wrote it.
    pub fn agent_info(&self) -> Option<AgentInfo> {
        self.agent.get(&0, 0).ok().filter(|info| info.pid != 0)
    }
}
