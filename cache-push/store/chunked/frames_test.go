package chunked

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/klauspost/compress/zstd"
)

func noise(n int) []byte {
	b := make([]byte, n)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range b {
		if i%3 == 0 {
			b[i] = byte(rng.Uint32())
		} else {
			b[i] = 'a' + byte(i%7)
		}
	}
	return b
}

// TestFrameLen finds the ends of frames as klauspost/compress writes them
// (one frame per EncodeAll, a streaming encoder's many-block frame with
// and without checksum, an empty input's frame) and of skippable frames.
func TestFrameLen(t *testing.T) {
	enc, _ := zstd.NewWriter(nil, zstd.WithZeroFrames(true))
	noCRC, _ := zstd.NewWriter(nil, zstd.WithEncoderCRC(false))
	var stream bytes.Buffer
	sw, _ := zstd.NewWriter(&stream)
	sw.Write(noise(1 << 20))
	sw.Close()
	skippable := binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(nil, 0x184D2A5A), 5)
	skippable = append(skippable, "hello"...)
	frames := [][]byte{
		enc.EncodeAll(noise(70000), nil),
		enc.EncodeAll(nil, nil),
		noCRC.EncodeAll(noise(300000), nil),
		stream.Bytes(),
		skippable,
		enc.EncodeAll(bytes.Repeat([]byte{'x'}, 500000), nil), // RLE blocks
	}
	var all []byte
	for _, f := range frames {
		all = append(all, f...)
	}
	for i, f := range frames {
		n, err := frameLen(all)
		if err != nil || n != len(f) {
			t.Fatalf("frame %d: frameLen = %d, %v; want %d", i, n, err, len(f))
		}
		// Any prefix of the frame is incomplete, never an error or a
		// wrong end.
		for cut := 0; cut < len(f); cut += 1 + len(f)/13 {
			if n, err := frameLen(f[:cut]); n != 0 || err != nil {
				t.Fatalf("frame %d cut at %d: frameLen = %d, %v; want 0, nil", i, cut, n, err)
			}
		}
		all = all[n:]
	}
	for _, bad := range [][]byte{[]byte("nix-archive-1"), []byte("\x0d\x00\x00\x00\x00\x00\x00\x00nix-archive-1"), {0xFD, '7', 'z', 'X', 'Z', 0}} {
		if _, err := frameLen(bad); !errors.Is(err, errNotFrame) {
			t.Errorf("frameLen(%q) = %v, want errNotFrame", bad, err)
		}
	}
}

// FuzzFrameLen: no input makes frameLen panic or claim more bytes than it
// was given.
func FuzzFrameLen(f *testing.F) {
	enc, _ := zstd.NewWriter(nil)
	f.Add(enc.EncodeAll(noise(5000), nil))
	f.Add([]byte("provenix-chunk-list 1\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := frameLen(b)
		if n < 0 || n > len(b) || (err != nil && n != 0) {
			t.Fatalf("frameLen = %d, %v for %d bytes", n, err, len(b))
		}
	})
}

// FuzzParseList: no input makes parseList panic, and what it accepts adds
// up and encodes back to itself.
func FuzzParseList(f *testing.F) {
	l := &chunkList{}
	l.add([32]byte{1}, 10)
	l.add([32]byte{2}, 20)
	f.Add(l.encode())
	f.Add([]byte("provenix-chunk-list 1\nsize 0\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := parseList(bytes.NewReader(b))
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("parseList error %v does not match ErrCorrupt", err)
			}
			return
		}
		var sum int64
		for _, e := range got.entries {
			sum += e.size
		}
		if sum != got.size {
			t.Fatalf("entries add up to %d, size %d", sum, got.size)
		}
		again, err := parseList(bytes.NewReader(got.encode()))
		if err != nil || again.size != got.size || len(again.entries) != len(got.entries) {
			t.Fatalf("re-encoded list: %v", err)
		}
	})
}
