package nardiff

import (
	"bytes"
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"sync/atomic"
	"unicode/utf8"
)

const chunk = 1 << 20

// contents compares one regular file of both sides, reading sizeA bytes
// from ra and sizeB from rb. Files that fit MaxBuffer on both sides are
// held in memory for a deep look; larger ones are compared as streams.
func (d *differ) contents(fd *FileDiff, ra, rb io.Reader, sizeA, sizeB int64, again *io.SectionReader) (bool, error) {
	if sizeA > d.lim.MaxBuffer || sizeB > d.lim.MaxBuffer {
		return d.stream(fd, ra, rb, sizeA, sizeB, again)
	}
	var err error
	if d.bufA, err = fill(d.bufA, ra, sizeA); err != nil {
		return false, fmt.Errorf("%w: %s: %s: %v", ErrMalformed, d.o.LabelA, fd.Path, err)
	}
	if d.bufB, err = fill(d.bufB, rb, sizeB); err != nil {
		return false, fmt.Errorf("%w: %s: %s: %v", ErrMalformed, d.o.LabelB, fd.Path, err)
	}
	if bytes.Equal(d.bufA, d.bufB) {
		return false, nil
	}
	if d.full {
		return true, nil // only counted: spare the deep look
	}
	d.left = d.lim.MaxExpand
	d.blobs(fd, d.bufA, d.bufB, 0)
	return true, nil
}

// fill reads exactly n bytes into buf, reusing its storage.
func fill(buf []byte, r io.Reader, n int64) ([]byte, error) {
	if int64(cap(buf)) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	_, err := io.ReadFull(r, buf)
	return buf, err
}

// stream compares two large files chunk by chunk. Only a differing file
// needs its sha256, but by the first difference the common prefix is
// read: when A can be read again (again, from the contents' start) the
// prefix is hashed then, from there; otherwise a goroutine hashes it
// behind the comparison, as far behind as the memory of the two
// in-memory buffers allows (2 × MaxBuffer, which a streamed file does
// not use otherwise). At the first difference the hasher catches up and
// its state is cloned, one per side, and the two sides' rests are hashed
// at once (rest). When the files end equal, what the hasher has not
// reached is dropped, not hashed: sha256 is slower than the comparison
// (about 1 GB/s here even with SHA-NI), and equal files are the common
// case.
func (d *differ) stream(fd *FileDiff, ra, rb io.Reader, sizeA, sizeB int64, again *io.SectionReader) (bool, error) {
	const lag = 3
	chunks := d.chunks()
	ring := len(chunks) - 1
	if again != nil {
		ring = lag
	}
	free := make(chan []byte, ring)
	for _, b := range chunks[:ring] {
		free <- b
	}
	cb := chunks[len(chunks)-1]
	h := sha256.New()
	var (
		work   chan []byte
		drop   atomic.Bool
		hashed = make(chan struct{})
	)
	if again == nil {
		work = make(chan []byte, ring)
		go func() {
			defer close(hashed)
			for b := range work {
				if !drop.Load() {
					h.Write(b)
				}
				free <- b[:chunk]
			}
		}()
	}
	// stopHashing ends the hasher: it hashes what is queued when keep,
	// else drops it.
	stopHashing := func(keep bool) {
		if work != nil {
			drop.Store(!keep)
			close(work)
			<-hashed
			work = nil
		}
	}
	defer stopHashing(false)

	var pos int64
	for {
		if err := d.ctx.Err(); err != nil {
			return false, fmt.Errorf("nardiff: %s: %w", fd.Path, err)
		}
		ca := <-free
		na, errA := io.ReadFull(ra, ca)
		nb, errB := io.ReadFull(rb, cb)
		if i := firstDiff(ca[:na], cb[:nb]); i >= 0 {
			stopHashing(true)
			if again != nil {
				if _, err := io.Copy(h, io.LimitReader(again, pos)); err != nil {
					return false, fmt.Errorf("%w: %s: %s: reading again: %v", ErrMalformed, d.o.LabelA, fd.Path, err)
				}
			}
			ha, hb := clone(h), clone(h)
			ha.Write(ca[:na])
			hb.Write(cb[:nb])
			d.window(fd, ca[:na], cb[:nb], i, pos)
			return true, d.rest(fd, ra, rb, ha, hb, ca, cb)
		}
		if work != nil {
			work <- ca[:na]
		} else {
			free <- ca
		}
		pos += int64(na)
		if errA == nil && errB == nil {
			continue
		}
		for _, e := range []struct {
			err   error
			label string
		}{{errA, d.o.LabelA}, {errB, d.o.LabelB}} {
			if e.err != nil && e.err != io.EOF && e.err != io.ErrUnexpectedEOF {
				return false, fmt.Errorf("%w: %s: %s: %v", ErrMalformed, e.label, fd.Path, e.err)
			}
		}
		if sizeA == sizeB {
			return false, nil
		}
	}
}

// chunks carves the in-memory buffers (grown to MaxBuffer each, and to
// at least 4 chunks in all) into chunks for stream: the memory a deep
// look takes, reused, not more.
func (d *differ) chunks() [][]byte {
	per := max(d.lim.MaxBuffer/chunk*chunk, 2*chunk)
	var out [][]byte
	for _, buf := range []*[]byte{&d.bufA, &d.bufB} {
		if int64(cap(*buf)) < per {
			*buf = make([]byte, per)
		}
		b := (*buf)[:per]
		for i := int64(0); i < per; i += chunk {
			out = append(out, b[i:i+chunk:i+chunk])
		}
	}
	return out
}

// rest hashes what remains of both sides after the first difference,
// each side in its own goroutine (the two sides are separate readers).
func (d *differ) rest(fd *FileDiff, ra, rb io.Reader, ha, hb hash.Hash, ca, cb []byte) error {
	doneB := make(chan error, 1)
	go func() {
		_, err := io.CopyBuffer(hb, rb, cb)
		doneB <- err
	}()
	_, errA := io.CopyBuffer(ha, ra, ca)
	errB := <-doneB
	if errA != nil {
		return fmt.Errorf("%w: %s: %s: %v", ErrMalformed, d.o.LabelA, fd.Path, errA)
	}
	if errB != nil {
		return fmt.Errorf("%w: %s: %s: %v", ErrMalformed, d.o.LabelB, fd.Path, errB)
	}
	fd.Kind = Contents
	fd.Format = "binary"
	fd.A.SHA256 = hex.EncodeToString(ha.Sum(nil))
	fd.B.SHA256 = hex.EncodeToString(hb.Sum(nil))
	fd.Notes = append(fd.Notes, fmt.Sprintf("larger than %d bytes: compared as a stream", d.lim.MaxBuffer))
	return nil
}

// firstDiff returns the first index where a and b differ (a shorter slice
// differs at its end), or -1 when they are equal.
func firstDiff(a, b []byte) int {
	n := min(len(a), len(b))
	if bytes.Equal(a[:n], b[:n]) {
		if len(a) == len(b) {
			return -1
		}
		return n
	}
	// Narrow down in blocks so the common case runs at memcmp speed.
	lo := 0
	for n-lo > 64 {
		mid := lo + (n-lo)/2
		if bytes.Equal(a[lo:mid], b[lo:mid]) {
			lo = mid
		} else {
			n = mid
		}
	}
	for i := lo; i < n; i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return n
}

func clone(h hash.Hash) hash.Hash {
	st, err := h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		panic(err) // sha256 always marshals
	}
	c := sha256.New()
	if err := c.(encoding.BinaryUnmarshaler).UnmarshalBinary(st); err != nil {
		panic(err)
	}
	return c
}

const window = 16

// window records the first differing offset (base+i) with a hex window
// around it on each side, and the causes seen in a wider window.
func (d *differ) window(fd *FileDiff, a, b []byte, i int, base int64) {
	fd.Offset = base + int64(i)
	lo := max(0, i-window)
	ha := fmt.Sprintf("% x", a[lo:min(len(a), i+window)])
	hb := fmt.Sprintf("% x", b[lo:min(len(b), i+window)])
	if d.spend(len(ha) + len(hb)) {
		fd.HexA, fd.HexB = ha, hb
	}
	wlo := max(0, i-64)
	wa, wb := a[wlo:min(len(a), i+64)], b[wlo:min(len(b), i+64)]
	fd.Causes = mergeCauses(fd.Causes, causesIn(wa, wb, d.o, true))
	if c, ok := binaryTime(a, b, i, d.o); ok {
		fd.Causes = mergeCauses(fd.Causes, []Cause{c})
	}
}

// blobs explains two differing in-memory contents: archives by member,
// ELF by section, text by unified diff, anything else by offset.
func (d *differ) blobs(fd *FileDiff, a, b []byte, depth int) {
	if fd.A != nil && fd.A.SHA256 == "" {
		sa, sb := sha256.Sum256(a), sha256.Sum256(b)
		fd.A.SHA256, fd.B.SHA256 = hex.EncodeToString(sa[:]), hex.EncodeToString(sb[:])
	}
	fd.Kind = Contents
	if err := d.ctx.Err(); err != nil {
		fd.Notes = append(fd.Notes, "not examined: "+err.Error())
		return
	}
	// The standard library's ELF, zip and tar readers meet hostile bytes
	// here; a panic in one must not take a pusher down with it.
	defer func() {
		if p := recover(); p != nil {
			fd.Notes = append(fd.Notes, fmt.Sprintf("%s reader failed: %v", fd.Format, p))
		}
	}()
	nested := depth < d.lim.MaxDepth
	switch {
	case isGzip(a) && isGzip(b) && nested:
		fd.Format = "gzip"
		d.gzip(fd, a, b, depth)
	case isZip(a) && isZip(b) && nested:
		fd.Format = "zip"
		d.zip(fd, a, b, depth)
	case isTar(a) && isTar(b) && nested:
		fd.Format = "tar"
		d.tar(fd, a, b, depth)
	case isELF(a) && isELF(b):
		fd.Format = "elf"
		d.elf(fd, a, b)
		d.window(fd, a, b, firstDiff(a, b), 0)
	case isText(a) && isText(b) && int64(max(len(a), len(b))) <= d.lim.MaxTextSize:
		fd.Format = "text"
		d.text(fd, a, b)
	default:
		if !nested && (isGzip(a) || isZip(a) || isTar(a)) {
			fd.Notes = append(fd.Notes, fmt.Sprintf("archive nested deeper than %d: not opened", d.lim.MaxDepth))
		}
		fd.Format = "binary"
		d.window(fd, a, b, firstDiff(a, b), 0)
		if len(fd.Causes) == 0 {
			if c, ok := randomBytes(a, b); ok {
				fd.Causes = append(fd.Causes, c)
			}
		}
	}
}

// randomBytes recognises a small binary file (a seed, a key, a nonce)
// whose bytes mostly all differ at equal size: random data.
func randomBytes(a, b []byte) (Cause, bool) {
	if len(a) != len(b) || len(a) == 0 || len(a) > 4096 {
		return Cause{}, false
	}
	n := 0
	for i := range a {
		if a[i] != b[i] {
			n++
		}
	}
	if n*2 < len(a) {
		return Cause{}, false
	}
	return Cause{Kind: CauseRandom, Evidence: fmt.Sprintf("%d of %d bytes differ: random data", n, len(a))}, true
}

func isGzip(b []byte) bool { return len(b) >= 3 && b[0] == 0x1f && b[1] == 0x8b && b[2] == 8 }
func isZip(b []byte) bool  { return len(b) >= 4 && string(b[:4]) == "PK\x03\x04" }
func isELF(b []byte) bool  { return len(b) >= 4 && string(b[:4]) == "\x7fELF" }

// isTar recognises a ustar or GNU tar header.
func isTar(b []byte) bool {
	return len(b) >= 512 && (string(b[257:262]) == "ustar")
}

// isText: valid UTF-8 without NUL, mostly printable, in the first 8 KiB.
func isText(b []byte) bool {
	s := b[:min(len(b), 8192)]
	if bytes.IndexByte(s, 0) >= 0 {
		return false
	}
	v := s
	if len(b) > len(s) {
		// The sample may end inside a rune.
		for i := 0; i < utf8.UTFMax && len(v) > 0 && !utf8.Valid(v); i++ {
			v = v[:len(v)-1]
		}
	}
	if !utf8.Valid(v) {
		return false
	}
	bad := 0
	for _, c := range s {
		if c < 0x20 && c != '\n' && c != '\r' && c != '\t' && c != '\f' && c != 0x1b {
			bad++
		}
	}
	return bad*100 <= len(s)
}
