package chunked

import (
	"encoding/binary"
	"errors"
)

// The zstd frame format (RFC 8878 §3.1): enough of it to find where a frame
// ends without decompressing it.
const (
	zstdMagic     = 0xFD2FB528
	skippableMask = 0xFFFFFFF0
	skippableID   = 0x184D2A50
	maxBlockSize  = 128 << 10
)

// errNotFrame: the bytes do not start with a zstd frame.
var errNotFrame = errors.New("not a zstd frame")

// frameLen returns the length of the zstd frame (or skippable frame) that b
// starts with: n > 0 when the whole frame is in b, 0 when b holds only its
// beginning, errNotFrame when b does not start with one. It reads headers
// only (frame header, block headers, checksum), so calling it again on a
// longer b costs little.
func frameLen(b []byte) (int, error) {
	if len(b) < 4 {
		return 0, nil
	}
	magic := binary.LittleEndian.Uint32(b)
	if magic&skippableMask == skippableID {
		if len(b) < 8 {
			return 0, nil
		}
		n := 8 + int64(binary.LittleEndian.Uint32(b[4:]))
		if int64(len(b)) < n {
			return 0, nil
		}
		return int(n), nil
	}
	if magic != zstdMagic {
		return 0, errNotFrame
	}
	if len(b) < 5 {
		return 0, nil
	}
	fhd := b[4]
	if fhd&0x08 != 0 { // reserved bit
		return 0, errNotFrame
	}
	single := fhd&0x20 != 0
	checksum := fhd&0x04 != 0
	pos := 5
	if !single {
		pos++ // window descriptor
	}
	pos += [4]int{0, 1, 2, 4}[fhd&3] // dictionary ID
	fcs := [4]int{0, 2, 4, 8}[fhd>>6]
	if fhd>>6 == 0 && single {
		fcs = 1
	}
	pos += fcs
	for {
		if len(b) < pos+3 {
			return 0, nil
		}
		h := uint32(b[pos]) | uint32(b[pos+1])<<8 | uint32(b[pos+2])<<16
		pos += 3
		last, typ, size := h&1 == 1, (h>>1)&3, int(h>>3)
		if size > maxBlockSize {
			return 0, errNotFrame
		}
		switch typ {
		case 0, 2: // raw, compressed
			pos += size
		case 1: // RLE: one byte repeated size times
			pos++
		default:
			return 0, errNotFrame
		}
		if last {
			if checksum {
				pos += 4
			}
			if len(b) < pos {
				return 0, nil
			}
			return pos, nil
		}
	}
}
