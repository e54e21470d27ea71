use super::*;
use crate::net::{Filtering, LinkSpec, Mapping, NatSpec, RealmId};

type S = Swarm<Vec<u8>>;

fn swarm() -> S {
    Swarm::new(
        Network::new(Rng::seed(11)),
        SwarmConfig::default(),
        Rng::seed(12),
        1 << 20,
    )
}

fn public(s: &mut S, services: Services) -> HostId {
    let h = s
        .net
        .add_host(RealmId::INTERNET, LinkSpec::default())
        .unwrap();
    s.add_host(h, services);
    h
}

fn natted(s: &mut S, m: Mapping, f: Filtering) -> HostId {
    let (_, r) = s
        .net
        .add_nat(RealmId::INTERNET, NatSpec::new(m, f))
        .unwrap();
    let h = s.net.add_host(r, LinkSpec::default()).unwrap();
    s.add_host(
        h,
        Services {
            dcutr: true,
            ..Services::default()
        },
    );
    h
}

/// `from` dials `to` at its listen address.
fn dial(s: &mut S, from: HostId, to: HostId) {
    let addr = s.listen_addr(to);
    s.command(
        from,
        Command::Dial {
            peer: to,
            addrs: vec![addr],
        },
    )
    .unwrap();
}

/// Runs until `deadline`, collecting every event.
fn run(s: &mut S, secs: u64) -> Vec<(HostId, Event<Vec<u8>>)> {
    let deadline = s.now() + Duration::from_secs(secs);
    let mut out = Vec::new();
    while let Some(step) = s.step(deadline).unwrap() {
        if let Step::Event(h, e) = step {
            out.push((h, e));
        }
    }
    out
}

fn connected(evs: &[(HostId, Event<Vec<u8>>)], h: HostId, p: HostId) -> Option<(ConnId, PathKind)> {
    evs.iter().rev().find_map(|(at, e)| match e {
        Event::Connected {
            conn, peer, path, ..
        } if *at == h && *peer == p => Some((*conn, *path)),
        _ => None,
    })
}

fn relay_services() -> Services {
    Services {
        relay: true,
        rendezvous: true,
        autonat: true,
        dcutr: false,
    }
}

#[test]
fn a_public_host_is_dialed_and_messages_flow_both_ways() {
    let mut s = swarm();
    let a = public(&mut s, Services::default());
    let b = public(&mut s, Services::default());
    dial(&mut s, a, b);
    let evs = run(&mut s, 2);
    let (c, path) = connected(&evs, a, b).expect("a connected");
    assert_eq!(path, PathKind::Direct);
    assert!(connected(&evs, b, a).is_some());
    s.command(
        a,
        Command::Send {
            conn: c,
            msg: b"hi".to_vec(),
        },
    )
    .unwrap();
    s.command(
        b,
        Command::Send {
            conn: c,
            msg: b"yo".to_vec(),
        },
    )
    .unwrap();
    let evs = run(&mut s, 1);
    assert!(evs.contains(&(
        b,
        Event::Message {
            conn: c,
            peer: a,
            msg: b"hi".to_vec()
        }
    )));
    assert!(evs.contains(&(
        a,
        Event::Message {
            conn: c,
            peer: b,
            msg: b"yo".to_vec()
        }
    )));
    // Keep-alives hold an idle connection open for minutes.
    let evs = run(&mut s, 300);
    assert!(
        !evs.iter().any(|(_, e)| matches!(e, Event::Closed { .. })),
        "{evs:?}"
    );
}

#[test]
fn what_a_listener_sends_at_once_reaches_the_dialer_even_ahead_of_the_handshake() {
    // Jitter far above the latency reorders the listener's answer and its first message
    // about half the time; the dialer must hold the early message, not drop it.
    let mut s = swarm();
    let jittery = LinkSpec {
        latency: Duration::from_millis(1),
        jitter: Duration::from_millis(40),
        ..LinkSpec::default()
    };
    let host = |s: &mut S| {
        let h = s.net.add_host(RealmId::INTERNET, jittery).unwrap();
        s.add_host(h, Services::default());
        h
    };
    let pairs: Vec<(HostId, HostId)> = (0..24).map(|_| (host(&mut s), host(&mut s))).collect();
    for &(a, b) in &pairs {
        dial(&mut s, a, b);
    }
    let deadline = s.now() + Duration::from_secs(3);
    let mut got = Vec::new();
    while let Some(step) = s.step(deadline).unwrap() {
        let Step::Event(h, e) = step else { continue };
        match e {
            // The listener speaks as soon as it accepts.
            Event::Connected {
                conn,
                outbound: false,
                ..
            } => s
                .command(
                    h,
                    Command::Send {
                        conn,
                        msg: b"hello".to_vec(),
                    },
                )
                .unwrap(),
            Event::Message { peer, .. } => got.push((h, peer)),
            _ => {}
        }
    }
    for (a, b) in pairs {
        assert!(got.contains(&(a, b)), "{a:?} never heard {b:?}");
    }
}

#[test]
fn a_host_behind_a_nat_cannot_be_dialed_and_its_peers_notice_a_crash() {
    let mut s = swarm();
    let a = public(&mut s, Services::default());
    let b = natted(
        &mut s,
        Mapping::EndpointIndependent,
        Filtering::AddressAndPortDependent,
    );
    let b_addr = s.listen_addr(b);
    dial(&mut s, a, b);
    let evs = run(&mut s, 10);
    assert!(evs.contains(&(a, Event::DialFailed { peer: b })));
    // The other way works, and the observed address is the NAT's.
    dial(&mut s, b, a);
    let evs = run(&mut s, 2);
    assert!(connected(&evs, b, a).is_some());
    assert_ne!(s.observed_addrs(b)[0], b_addr);
    s.crash(b);
    let evs = run(&mut s, 120);
    assert!(
        evs.iter().any(|(h, e)| *h == a
            && matches!(
                e,
                Event::Closed {
                    reason: CloseReason::Idle,
                    ..
                }
            )),
        "{evs:?}"
    );
}

/// Relay reservation, relayed dial, then DCUtR; the outcome is up to the NATs.
fn punch(ma: Mapping, fa: Filtering, mb: Mapping, fb: Filtering) -> (bool, S, HostId, HostId) {
    let mut s = swarm();
    let r = public(&mut s, relay_services());
    let a = natted(&mut s, ma, fa);
    let b = natted(&mut s, mb, fb);
    for h in [a, b] {
        dial(&mut s, h, r);
    }
    run(&mut s, 2);
    s.command(b, Command::Reserve { relay: r }).unwrap();
    let evs = run(&mut s, 2);
    assert!(evs
        .iter()
        .any(|(h, e)| *h == b && matches!(e, Event::Reserved { .. })));
    s.command(
        a,
        Command::DialRelayed {
            relay: r,
            target: b,
        },
    )
    .unwrap();
    let evs = run(&mut s, 30);
    let relayed = evs.iter().any(|(h, e)| {
        *h == a
            && matches!(
                e,
                Event::Connected {
                    path: PathKind::Relayed { .. },
                    ..
                }
            )
    });
    assert!(relayed, "{evs:?}");
    let ok = evs
        .iter()
        .any(|(h, e)| *h == b && *e == Event::HolePunch { peer: a, ok: true });
    let failed = evs
        .iter()
        .any(|(h, e)| *h == b && *e == Event::HolePunch { peer: a, ok: false });
    assert_ne!(ok, failed, "exactly one verdict: {evs:?}");
    if ok {
        assert!(evs.iter().any(|(h, e)| *h == a
            && matches!(e, Event::Connected { path: PathKind::Direct, peer, .. } if *peer == b)));
    }
    (ok, s, a, b)
}

#[test]
fn nat_truth_table_for_hole_punching() {
    use Filtering as F;
    use Mapping as M;
    // Endpoint-independent mapping on both sides: punched, whatever the filtering.
    for f in [
        F::EndpointIndependent,
        F::AddressDependent,
        F::AddressAndPortDependent,
    ] {
        assert!(
            punch(M::EndpointIndependent, f, M::EndpointIndependent, f).0,
            "EIM/{f:?}"
        );
    }
    // Address-and-port-dependent mapping on both sides: fails after 3 attempts.
    let (ok, s, _, _) = punch(
        M::AddressAndPortDependent,
        F::AddressAndPortDependent,
        M::AddressAndPortDependent,
        F::AddressAndPortDependent,
    );
    assert!(!ok);
    assert_eq!(s.stats.hole_punch_attempts, 3);
    // One symmetric side against a full cone: the full cone's port is stable and unfiltered.
    assert!(
        punch(
            M::AddressAndPortDependent,
            F::AddressAndPortDependent,
            M::EndpointIndependent,
            F::EndpointIndependent
        )
        .0
    );
    // Symmetric against port-restricted cone: fails.
    assert!(
        !punch(
            M::AddressAndPortDependent,
            F::AddressAndPortDependent,
            M::EndpointIndependent,
            F::AddressAndPortDependent
        )
        .0
    );
}

#[test]
fn circuits_end_at_their_byte_and_time_limits() {
    let (_, mut s, a, b) = punch(
        Mapping::AddressAndPortDependent,
        Filtering::AddressAndPortDependent,
        Mapping::AddressAndPortDependent,
        Filtering::AddressAndPortDependent,
    );
    // The relayed connection closes at the 2-minute limit (some of it has passed).
    let evs = run(&mut s, 120);
    assert!(
        evs.iter().any(|(h, e)| *h == a && matches!(e, Event::Closed { reason: CloseReason::RelayLimit, peer, .. } if *peer == b)),
        "{evs:?}"
    );
    // A fresh circuit that carries more than 128 KiB is cut.
    let r = HostId(0);
    s.command(
        a,
        Command::DialRelayed {
            relay: r,
            target: b,
        },
    )
    .unwrap();
    let evs = run(&mut s, 1);
    let (c, _) = connected(&evs, a, b).unwrap();
    let send = |s: &mut S, n| {
        for _ in 0..n {
            s.command(
                a,
                Command::Send {
                    conn: c,
                    msg: vec![0; 8 * 1024],
                },
            )
            .unwrap();
        }
    };
    send(&mut s, 8);
    let evs = run(&mut s, 2);
    let got = evs
        .iter()
        .filter(|(h, e)| *h == b && matches!(e, Event::Message { .. }))
        .count();
    assert_eq!(got, 8, "64 KiB fit");
    send(&mut s, 10);
    let evs = run(&mut s, 2);
    assert!(evs.iter().any(|(h, e)| *h == b
        && matches!(
            e,
            Event::Closed {
                reason: CloseReason::RelayLimit,
                ..
            }
        )));
}

#[test]
fn relays_cap_reservations_and_refuse_unknown_targets() {
    let mut s = swarm();
    s.cfg.relay.max_reservations = 2;
    let r = public(&mut s, relay_services());
    let clients: Vec<HostId> = (0..3)
        .map(|_| {
            natted(
                &mut s,
                Mapping::EndpointIndependent,
                Filtering::EndpointIndependent,
            )
        })
        .collect();
    for &c in &clients {
        dial(&mut s, c, r);
    }
    run(&mut s, 2);
    for &c in &clients {
        s.command(c, Command::Reserve { relay: r }).unwrap();
    }
    let evs = run(&mut s, 2);
    let ok = evs
        .iter()
        .filter(|(_, e)| matches!(e, Event::Reserved { .. }))
        .count();
    assert_eq!(ok, 2);
    assert_eq!(s.reservations_held(r), 2);
    let refused = *clients
        .iter()
        .find(|c| evs.contains(&(**c, Event::ReservationFailed { relay: r })))
        .unwrap();
    let holder = *clients.iter().find(|c| **c != refused).unwrap();
    s.command(
        holder,
        Command::DialRelayed {
            relay: r,
            target: refused,
        },
    )
    .unwrap();
    let evs = run(&mut s, 2);
    assert!(evs.contains(&(
        holder,
        Event::RelayedDialFailed {
            relay: r,
            target: refused
        }
    )));
}

#[test]
fn autonat_tells_public_from_private() {
    let mut s = swarm();
    let server = public(&mut s, relay_services());
    let open = public(&mut s, Services::default());
    let closed = natted(
        &mut s,
        Mapping::EndpointIndependent,
        Filtering::AddressAndPortDependent,
    );
    let cone = natted(
        &mut s,
        Mapping::EndpointIndependent,
        Filtering::EndpointIndependent,
    );
    let restricted = natted(
        &mut s,
        Mapping::EndpointIndependent,
        Filtering::AddressDependent,
    );
    let helper = s
        .net
        .add_host(RealmId::INTERNET, LinkSpec::default())
        .unwrap();
    s.set_autonat_helper(server, helper);
    for h in [open, closed, cone, restricted] {
        dial(&mut s, h, server);
    }
    run(&mut s, 2);
    for h in [open, closed, cone, restricted] {
        s.command(h, Command::AutoNatProbe { server }).unwrap();
    }
    let evs = run(&mut s, 10);
    assert!(evs.contains(&(
        open,
        Event::AutoNat {
            server,
            reachable: true
        }
    )));
    assert!(evs.contains(&(
        closed,
        Event::AutoNat {
            server,
            reachable: false
        }
    )));
    assert!(evs.contains(&(
        cone,
        Event::AutoNat {
            server,
            reachable: true
        }
    )));
    // Address-restricted: the dial-back comes from another address and is filtered.
    assert!(evs.contains(&(
        restricted,
        Event::AutoNat {
            server,
            reachable: false
        }
    )));
}

#[test]
fn mdns_finds_lan_peers_only_and_rendezvous_returns_registrations() {
    let mut s = swarm();
    let (_, lan) = s
        .net
        .add_nat(
            RealmId::INTERNET,
            NatSpec::new(Mapping::EndpointIndependent, Filtering::EndpointIndependent),
        )
        .unwrap();
    let hs: Vec<HostId> = (0..3)
        .map(|_| {
            let h = s.net.add_host(lan, LinkSpec::default()).unwrap();
            s.add_host(h, Services::default());
            h
        })
        .collect();
    let outsider = public(&mut s, relay_services());
    s.command(hs[0], Command::MdnsQuery).unwrap();
    let evs = run(&mut s, 1);
    let found: Vec<HostId> = evs
        .iter()
        .filter_map(|(h, e)| match e {
            Event::MdnsFound { peer, .. } if *h == hs[0] => Some(*peer),
            _ => None,
        })
        .collect();
    let mut found = found;
    found.sort();
    assert_eq!(found, vec![hs[1], hs[2]]);
    for &h in &hs {
        dial(&mut s, h, outsider);
    }
    run(&mut s, 2);
    for &h in &hs {
        s.command(
            h,
            Command::Register {
                server: outsider,
                ns: 7,
                ttl: Duration::from_secs(7200),
                record: vec![h.0 as u8],
            },
        )
        .unwrap();
    }
    run(&mut s, 1);
    s.command(
        hs[0],
        Command::Discover {
            server: outsider,
            ns: 7,
            limit: 10,
        },
    )
    .unwrap();
    let evs = run(&mut s, 1);
    let mut recs = evs
        .iter()
        .find_map(|(_, e)| match e {
            Event::Discovered { records, .. } => Some(records.clone()),
            _ => None,
        })
        .unwrap();
    recs.sort();
    assert_eq!(
        recs,
        vec![(hs[1], vec![hs[1].0 as u8]), (hs[2], vec![hs[2].0 as u8])]
    );
}

#[test]
fn lost_packets_are_retransmitted() {
    let mut s = swarm();
    let a = public(&mut s, Services::default());
    let b = public(&mut s, Services::default());
    s.net.set_link(
        a,
        LinkSpec {
            loss_ppm: 300_000,
            ..LinkSpec::default()
        },
    );
    dial(&mut s, a, b);
    let evs = run(&mut s, 5);
    let (c, _) = connected(&evs, a, b).expect("dial survives loss");
    for i in 0..50u8 {
        s.command(
            a,
            Command::Send {
                conn: c,
                msg: vec![i],
            },
        )
        .unwrap();
    }
    let evs = run(&mut s, 10);
    let got = evs
        .iter()
        .filter(|(h, e)| *h == b && matches!(e, Event::Message { .. }))
        .count();
    assert!(got >= 49, "{got}");
    assert!(s.stats.retransmits > 0);
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let once = || {
        let (_, s, _, _) = punch(
            Mapping::EndpointIndependent,
            Filtering::AddressDependent,
            Mapping::AddressDependent,
            Filtering::AddressDependent,
        );
        (s.stats.clone(), s.net.stats.clone(), s.events_fired())
    };
    assert_eq!(once(), once());
}
