//! The sans-I/O connection (close phases, deadlines, backpressure) driven by arbitrary input:
//! client bytes in arbitrary pieces, clock jumps, stalls of the spill log, durability, the
//! drain, evictions and end of stream, against a simulated host. Whatever happens, no panic
//! (every phase change is asserted inside), nothing is sent after pusher's Close but the
//! Close itself, and a Close is sent at most once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pusher::connection::{Connection, Host, Limits, Note, PeerGone, Refusal};
use pusher::session::Millis;
use pusher::websocket::{Decoder, DecoderLimits, MessageKind};

#[derive(Default)]
struct Sim {
    full: bool,
    durable: bool,
    end_blocked: bool,
    closes_sent: u32,
    frames_after_close: u32,
}

impl Host for Sim {
    fn ready(&mut self) -> bool {
        !self.full
    }

    fn message(
        &mut self,
        kind: MessageKind,
        payload: &[u8],
        _: Millis,
        _: bool,
    ) -> Result<(), Refusal> {
        match (kind, payload.first()) {
            (MessageKind::Text, _) => Err(Refusal::Close(1003, "text")),
            (_, Some(0xFF)) => Err(Refusal::Close(1007, "bad")),
            (_, Some(0xFE)) => Err(Refusal::PeerGone),
            _ => Ok(()),
        }
    }

    fn end_session(&mut self, _: Millis) -> bool {
        !self.end_blocked
    }

    fn durable(&mut self) -> bool {
        self.durable
    }

    fn send(&mut self, parts: &[&[u8]]) -> Result<(), PeerGone> {
        let opcode = parts[0][0] & 0x0F;
        if self.closes_sent > 0 {
            self.frames_after_close += 1;
        }
        if opcode == 0x8 {
            self.closes_sent += 1;
        }
        Ok(())
    }

    fn note(&mut self, _: Note) {}
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        decoder: DecoderLimits {
            max_message_bytes: 2048,
        },
        idle_timeout_ms: 1_000,
        message_timeout_ms: 500,
        close_timeout_ms: 300,
    };
    let mut now = 0u64;
    let mut conn = Connection::new(limits, Millis(now));
    let mut sim = Sim::default();
    let mut buf = vec![0u8; Decoder::buffer_bytes_required(limits.decoder)];
    let mut filled = 0usize;
    let mut input = data;
    while let Some((&op, rest)) = input.split_first() {
        input = rest;
        if conn.is_done() {
            break;
        }
        match op % 8 {
            // Bytes arrive: the next (op / 8 + 1) bytes of the input.
            0..=2 if conn.wants_input() => {
                let take = (usize::from(op / 8) + 1).min(input.len());
                let (bytes, rest) = input.split_at(take);
                input = rest;
                if conn.discards_input() {
                    continue;
                }
                let room = buf.len() - filled;
                if bytes.len() > room {
                    conn.on_buffer_full(Millis(now), &mut sim);
                    continue;
                }
                buf[filled..filled + bytes.len()].copy_from_slice(bytes);
                filled = conn.on_bytes(&mut buf, filled + bytes.len(), Millis(now), &mut sim);
                if conn.input_is_dead() {
                    filled = 0;
                }
            }
            0..=2 => {}
            // Time passes; the shell's housekeeping ticks the connection (below).
            3 => now += u64::from(op / 8) * 37,
            4 => sim.full = !sim.full,
            5 => sim.durable = !sim.durable,
            6 => match op / 8 % 4 {
                0 => conn.go_away("drain", Millis(now), &mut sim),
                1 => {
                    conn.on_evicted(Millis(now), &mut sim);
                }
                2 => conn.on_end_of_stream(),
                _ => sim.end_blocked = !sim.end_blocked,
            },
            _ => {}
        }
        if op % 8 == 3 || op % 8 == 7 {
            if conn.on_tick(Millis(now), &mut sim) && filled > 0 {
                filled = conn.on_resume(&mut buf, filled, Millis(now), &mut sim);
            }
            if conn.input_is_dead() {
                filled = 0;
            }
            // After a tick, nothing that was due is left undone.
            assert!(
                conn.next_deadline(Millis(now)) > Millis(now)
                    || conn.waits_for_spill()
                    || conn.is_done(),
                "{:?} still due at {now}",
                conn.phase()
            );
        }
        assert!(sim.closes_sent <= 1, "one Close at most");
        assert_eq!(sim.frames_after_close, 0, "nothing after pusher's Close");
    }
});
