;; bench/wasm-floor.wat: bench/js-floor.ts's loop (forward) in WebAssembly, for bench/wasm-floor.ts. The same two
;; passes over one batch of up to 64 frames from a transmit ring into a receive ring (virtio 1.2, 2.7 split rings):
;; 1. heads, descriptors and their checks (one direct descriptor, the right direction, at least the 12-byte header,
;;    inside one region of the front-end's memory), a load of the first lines of each frame and a store into the
;;    first lines of its receive buffer;
;; 2. the copies behind a 12-byte virtio-net header with num_buffers 1 (5.1.6), used elements, one publish per ring.
;;    With VIRTIO_F_IN_ORDER a transmit batch gets one used element (2.7.9).
;; Everything lives in the one shared memory the module imports: the front-ends' memory mapped into it by
;; bench/wasm-floor.ts, and the state below. An offset outside the memory traps; the region checks keep each
;; front-end inside its own memory.
;;
;; A ring's state (at the offset forward is given; i32 unless said):
;;   +0 descOff  +4 availOff  +8 usedOff (where the ring's parts are in this memory)  +12 mask (size - 1)  +16 size
;;   +20 lastAvail  +24 usedIdx  +28 inOrder (0 or 1)  +32 region count (at most 8)
;;   +40 regions, 24 bytes each: guest address (i64), size (i64), where it starts in this memory (i32)
;; Scratch for one batch at 0x8000 (five arrays of 64 i32), and totals at 0x100: frames, chains not served
;; (notLone), frames without a receive buffer (noRoom), and the sum of pass 1's loads (touched).
(module
  (import "env" "mem" (memory 32768 32768 shared))
  (global $TXH i32 (i32.const 0x8000))
  (global $TXO i32 (i32.const 0x8100))
  (global $RXH i32 (i32.const 0x8200))
  (global $RXO i32 (i32.const 0x8300))
  (global $TXL i32 (i32.const 0x8400))

  (func $xlate (param $r i32) (param $addr i64) (param $len i32) (result i32)
    (local $i i32) (local $n i32) (local $p i32) (local $off i64)
    (local.set $n (i32.load offset=32 (local.get $r)))
    (local.set $p (i32.add (local.get $r) (i32.const 40)))
    (block $out
      (loop $l
        (br_if $out (i32.ge_u (local.get $i) (local.get $n)))
        (if (i64.ge_u (local.get $addr) (i64.load (local.get $p)))
          (then
            (local.set $off (i64.sub (local.get $addr) (i64.load (local.get $p))))
            (if (i64.le_u (i64.add (local.get $off) (i64.extend_i32_u (local.get $len))) (i64.load offset=8 (local.get $p)))
              (then (return (i32.add (i32.load offset=16 (local.get $p)) (i32.wrap_i64 (local.get $off))))))))
        (local.set $p (i32.add (local.get $p) (i32.const 24)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $l)))
    (i32.const -1))

  (func $head (param $r i32) (param $i i32) (result i32)
    (local $h i32)
    (local.set $h (i32.load16_u offset=4
      (i32.add (i32.load offset=4 (local.get $r))
        (i32.shl (i32.and (i32.add (i32.load offset=20 (local.get $r)) (local.get $i)) (i32.load offset=12 (local.get $r))) (i32.const 1)))))
    (if (result i32) (i32.lt_u (local.get $h) (i32.load offset=16 (local.get $r))) (then (local.get $h)) (else (i32.const -1))))

  (func $desc (param $r i32) (param $h i32) (result i32)
    (i32.add (i32.load (local.get $r)) (i32.shl (local.get $h) (i32.const 4))))

  ;; offset of descriptor h's buffer if lone, right direction, len >= 12, inside a region; else -1
  (func $buffer (param $r i32) (param $h i32) (param $w i32) (result i32)
    (local $d i32) (local $flags i32) (local $len i32)
    (local.set $d (call $desc (local.get $r) (local.get $h)))
    (local.set $flags (i32.load16_u offset=12 (local.get $d)))
    (if (i32.and (local.get $flags) (i32.const 5)) (then (return (i32.const -1))))
    (if (i32.ne (i32.shr_u (i32.and (local.get $flags) (i32.const 2)) (i32.const 1)) (local.get $w)) (then (return (i32.const -1))))
    (local.set $len (i32.load offset=8 (local.get $d)))
    (if (i32.lt_u (local.get $len) (i32.const 12)) (then (return (i32.const -1))))
    (call $xlate (local.get $r) (i64.load (local.get $d)) (local.get $len)))

  (func $use (param $r i32) (param $h i32) (param $len i32) (param $count i32)
    (local $at i32) (local $u i32)
    (local.set $u (i32.load offset=24 (local.get $r)))
    (local.set $at (i32.add (i32.add (i32.load offset=8 (local.get $r)) (i32.const 4))
      (i32.shl (i32.and (local.get $u) (i32.load offset=12 (local.get $r))) (i32.const 3))))
    (i32.store (local.get $at) (local.get $h))
    (i32.store offset=4 (local.get $at) (local.get $len))
    (i32.store offset=24 (local.get $r) (i32.and (i32.add (local.get $u) (local.get $count)) (i32.const 0xffff))))

  (func $pending (param $r i32) (result i32)
    (i32.and (i32.sub (i32.atomic.load16_u offset=2 (i32.load offset=4 (local.get $r))) (i32.load offset=20 (local.get $r))) (i32.const 0xffff)))

  (func $publish (param $r i32)
    (i32.atomic.store16 offset=2 (i32.load offset=8 (local.get $r)) (i32.load offset=24 (local.get $r))))

  (func (export "forward") (param $tx i32) (param $rx i32) (result i32)
    (local $n i32) (local $rxp i32) (local $i i32) (local $j i32) (local $th i32) (local $t i32) (local $len i32)
    (local $rh i32) (local $r i32) (local $touched i32) (local $txLast i32) (local $txUsed i32)
    (local $w i32) (local $words i32) (local $k i32) (local $frames i32)
    (local.set $n (call $pending (local.get $tx)))
    (if (i32.eqz (local.get $n)) (then (return (i32.const 0))))
    (if (i32.gt_u (local.get $n) (i32.const 64)) (then (local.set $n (i32.const 64))))
    (local.set $rxp (call $pending (local.get $rx)))
    ;; pass 1
    (block $p1e (loop $p1
      (br_if $p1e (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $th (call $head (local.get $tx) (local.get $i)))
      (local.set $t (if (result i32) (i32.lt_s (local.get $th) (i32.const 0)) (then (i32.const -1)) (else (call $buffer (local.get $tx) (local.get $th) (i32.const 0)))))
      (i32.store (i32.add (global.get $TXH) (i32.shl (local.get $i) (i32.const 2))) (local.get $th))
      (i32.store (i32.add (global.get $TXO) (i32.shl (local.get $i) (i32.const 2))) (local.get $t))
      (i32.store (i32.add (global.get $RXH) (i32.shl (local.get $i) (i32.const 2))) (i32.const -1))
      (block $cont
        (br_if $cont (i32.lt_s (local.get $t) (i32.const 0)))
        (local.set $len (i32.load offset=8 (call $desc (local.get $tx) (local.get $th))))
        (i32.store (i32.add (global.get $TXL) (i32.shl (local.get $i) (i32.const 2))) (local.get $len))
        (local.set $touched (i32.add (local.get $touched) (i32.load8_u (local.get $t))))
        (if (i32.gt_u (local.get $len) (i32.const 64)) (then (local.set $touched (i32.add (local.get $touched) (i32.load8_u offset=64 (local.get $t))))))
        (block $found (loop $scan
          (br_if $found (i32.ge_u (local.get $j) (local.get $rxp)))
          (local.set $rh (call $head (local.get $rx) (local.get $j)))
          (local.set $j (i32.add (local.get $j) (i32.const 1)))
          (local.set $r (if (result i32) (i32.lt_s (local.get $rh) (i32.const 0)) (then (i32.const -1)) (else (call $buffer (local.get $rx) (local.get $rh) (i32.const 1)))))
          (if (i32.and (i32.ge_s (local.get $r) (i32.const 0))
                       (i32.ge_u (i32.load offset=8 (call $desc (local.get $rx) (local.get $rh))) (local.get $len)))
            (then
              (i32.store (i32.add (global.get $RXH) (i32.shl (local.get $i) (i32.const 2))) (local.get $rh))
              (i32.store (i32.add (global.get $RXO) (i32.shl (local.get $i) (i32.const 2))) (local.get $r))
              (i32.store8 (local.get $r) (i32.const 0))
              (if (i32.gt_u (local.get $len) (i32.const 64)) (then (i32.store8 offset=64 (local.get $r) (i32.const 0))))
              (br $found)))
          (if (i32.ge_s (local.get $rh) (i32.const 0)) (then (call $use (local.get $rx) (local.get $rh) (i32.const 0) (i32.const 1))))
          (br $scan))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $p1)))
    (i32.store offset=0x10c (i32.const 0) (i32.add (i32.load offset=0x10c (i32.const 0)) (local.get $touched)))
    ;; pass 2
    (local.set $i (i32.const 0))
    (local.set $txLast (i32.const -1))
    (block $p2e (loop $p2
      (br_if $p2e (i32.ge_u (local.get $i) (local.get $n)))
      (local.set $th (i32.load (i32.add (global.get $TXH) (i32.shl (local.get $i) (i32.const 2)))))
      (local.set $rh (i32.load (i32.add (global.get $RXH) (i32.shl (local.get $i) (i32.const 2)))))
      (if (i32.ge_s (local.get $rh) (i32.const 0))
        (then
          (local.set $t (i32.load (i32.add (global.get $TXO) (i32.shl (local.get $i) (i32.const 2)))))
          (local.set $r (i32.load (i32.add (global.get $RXO) (i32.shl (local.get $i) (i32.const 2)))))
          (local.set $len (i32.load (i32.add (global.get $TXL) (i32.shl (local.get $i) (i32.const 2)))))
          (i64.store (local.get $r) (i64.const 0))
          (i32.store16 offset=8 (local.get $r) (i32.const 0))
          (i32.store16 offset=10 (local.get $r) (i32.const 1))
          ;; copy [12, len) by 8-byte words, then bytes
          (local.set $words (i32.shr_u (i32.sub (local.get $len) (i32.const 12)) (i32.const 3)))
          (local.set $k (i32.const 0))
          (block $ce (loop $cl
            (br_if $ce (i32.ge_u (local.get $k) (local.get $words)))
            (i64.store offset=12 (i32.add (local.get $r) (i32.shl (local.get $k) (i32.const 3)))
              (i64.load offset=12 (i32.add (local.get $t) (i32.shl (local.get $k) (i32.const 3)))))
            (local.set $k (i32.add (local.get $k) (i32.const 1)))
            (br $cl)))
          (local.set $k (i32.add (i32.const 12) (i32.shl (local.get $words) (i32.const 3))))
          (block $be (loop $bl
            (br_if $be (i32.ge_u (local.get $k) (local.get $len)))
            (i32.store8 (i32.add (local.get $r) (local.get $k)) (i32.load8_u (i32.add (local.get $t) (local.get $k))))
            (local.set $k (i32.add (local.get $k) (i32.const 1)))
            (br $bl)))
          (call $use (local.get $rx) (local.get $rh) (local.get $len) (i32.const 1))
          (local.set $frames (i32.add (local.get $frames) (i32.const 1))))
        (else
          (if (i32.lt_s (i32.load (i32.add (global.get $TXO) (i32.shl (local.get $i) (i32.const 2)))) (i32.const 0))
            (then (i32.store offset=0x104 (i32.const 0) (i32.add (i32.load offset=0x104 (i32.const 0)) (i32.const 1))))
            (else (i32.store offset=0x108 (i32.const 0) (i32.add (i32.load offset=0x108 (i32.const 0)) (i32.const 1)))))))
      (if (i32.ge_s (local.get $th) (i32.const 0))
        (then
          (if (i32.load offset=28 (local.get $tx))
            (then (local.set $txLast (local.get $th)) (local.set $txUsed (i32.add (local.get $txUsed) (i32.const 1))))
            (else (call $use (local.get $tx) (local.get $th) (i32.const 0) (i32.const 1))))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $p2)))
    (if (local.get $txUsed) (then (call $use (local.get $tx) (local.get $txLast) (i32.const 0) (local.get $txUsed))))
    (i32.store offset=20 (local.get $tx) (i32.and (i32.add (i32.load offset=20 (local.get $tx)) (local.get $n)) (i32.const 0xffff)))
    (i32.store offset=20 (local.get $rx) (i32.and (i32.add (i32.load offset=20 (local.get $rx)) (local.get $j)) (i32.const 0xffff)))
    (call $publish (local.get $tx))
    (if (local.get $j) (then (call $publish (local.get $rx))))
    (i32.store offset=0x100 (i32.const 0) (i32.add (i32.load offset=0x100 (i32.const 0)) (local.get $frames)))
    (local.get $frames))
)
