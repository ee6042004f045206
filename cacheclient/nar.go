package cacheclient

import (
	"bytes"
	"compress/bzip2"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/ulikunitz/xz"
)

// Decoder limits. A hostile cache can claim any window or dictionary size
// in a compressed stream's header; these bound what the decoders accept.
// Nix's own zstd (up to level 22) and xz (up to -9) stay within them.
const (
	maxZstdWindow = 128 << 20
	// compressedSlack is how far a compressed NAR may exceed its NarSize
	// beyond an eighth of it (incompressible data grows a little).
	compressedSlack = 1 << 20
	// maxNarSize keeps the size arithmetic far from overflowing; no store
	// path comes near 1 PiB.
	maxNarSize = 1 << 50
)

// NARDigest is what a NAR hashed to.
type NARDigest struct {
	SHA256 [32]byte
	Size   uint64
}

// NAR opens the NAR of ni (a narinfo checked by Narinfo) and returns its
// decompressed bytes as a stream that checks itself: it yields at most
// NarSize bytes, and its final Read returns io.EOF only when the stream held
// exactly NarSize bytes hashing to NarHash. Otherwise Read fails with an
// error matching ErrMismatch. So a consumer never sees a byte past NarSize,
// and a decompression bomb is stopped one byte after NarSize, whatever it
// would expand to. Memory does not grow with the NAR's size.
//
// Compressions: zstd, xz, bzip2 (the narinfo default) and none. The caller
// must read to io.EOF before trusting any byte, and Close the stream.
func (c *Client) NAR(ctx context.Context, ni *narinfo.NarInfo) (io.ReadCloser, error) {
	if err := narURLOK(ni.URL); err != nil {
		return nil, fmt.Errorf("%s: %w", c.base, err)
	}
	if err := checkNARInfo(c.base, ni); err != nil {
		return nil, err
	}
	resp, u, err := c.get(ctx, ni.URL)
	if err != nil {
		return nil, err
	}
	return DecodeNAR(u, resp.Body, ni)
}

// checkNARInfo refuses a narinfo whose NAR cannot be read safely.
func checkNARInfo(u string, ni *narinfo.NarInfo) error {
	if ni.NarHash == nil || len(ni.NarHash.Digest()) != sha256.Size {
		return fmt.Errorf("%s: %w: narinfo for %s has no sha256 NarHash", u, ErrMalformed, ni.StorePath)
	}
	if ni.NarSize > maxNarSize {
		return fmt.Errorf("%s: %w: narinfo for %s claims a %d-byte NAR", u, ErrMalformed, ni.StorePath, ni.NarSize)
	}
	switch ni.Compression {
	case "zstd", "xz", "bzip2", "none":
	default:
		return fmt.Errorf("%s: NAR compression %q is not supported (zstd, xz, bzip2, none are)", u, ni.Compression)
	}
	return nil
}

// DecodeNAR is NAR for a compressed NAR body already opened (from a
// store, say): the same limits and checks, with src naming the body in
// errors. It takes body over and closes it, also when it fails.
func DecodeNAR(src string, body io.ReadCloser, ni *narinfo.NarInfo) (io.ReadCloser, error) {
	return openNAR(src, body, ni, true)
}

// DecodeNARUnsafe is DecodeNAR without the NarHash check: the stream
// still stops at NarSize and fails when shorter, but any bytes of that
// size pass. Only for a caller whose output is checked by other means
// (an OCI layer streamed to a client that checks the layer's digest, made
// by DecodeNAR from the NAR that matched).
func DecodeNARUnsafe(src string, body io.ReadCloser, ni *narinfo.NarInfo) (io.ReadCloser, error) {
	return openNAR(src, body, ni, false)
}

// openNAR is DecodeNAR, checking the NarHash when checkHash is set.
func openNAR(src string, body io.ReadCloser, ni *narinfo.NarInfo, checkHash bool) (io.ReadCloser, error) {
	nr, err := decodeNAR(src, body, ni)
	if err != nil {
		body.Close()
		return nil, err
	}
	if !checkHash {
		nr.h = nil
	}
	return nr, nil
}

func decodeNAR(u string, rawBody io.ReadCloser, ni *narinfo.NarInfo) (*narReader, error) {
	if err := checkNARInfo(u, ni); err != nil {
		return nil, err
	}
	// The compressed stream is bounded too, so that an endless body (zstd
	// skippable frames decompress to nothing) cannot keep us reading. No
	// compressor Nix uses grows data by an eighth, and FileSize, when
	// given, bounds it further; FileSize alone cannot be the bound, since
	// it is not part of the signed fingerprint.
	fileLimit := ni.NarSize + ni.NarSize/8 + compressedSlack
	if ni.FileSize > 0 && ni.FileSize < fileLimit && ni.Compression != "none" {
		fileLimit = ni.FileSize
	}
	body := &limited{r: rawBody, left: fileLimit, what: "compressed NAR", url: u}
	nr := &narReader{url: u, body: rawBody, src: body, left: ni.NarSize + 1, wantSize: ni.NarSize, h: sha256.New()}
	copy(nr.want[:], ni.NarHash.Digest())
	switch ni.Compression {
	case "zstd":
		d, err := zstd.NewReader(body, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(maxZstdWindow), zstd.WithDecoderLowmem(true))
		if err != nil {
			return nil, fmt.Errorf("%s: zstd: %w", u, err)
		}
		nr.dec, nr.closeDec = d, d.Close
	case "xz":
		d, err := xz.NewReader(body)
		if err != nil {
			if body.ioErr == nil {
				err = fmt.Errorf("%w: %v", ErrMismatch, err)
			}
			return nil, fmt.Errorf("%s: xz: %w", u, err)
		}
		nr.dec = d
	case "bzip2":
		nr.dec = bzip2.NewReader(body)
	default: // "none"
		nr.dec = body
	}
	return nr, nil
}

// VerifyNAR downloads the NAR of ni and checks it against NarHash and
// NarSize (ErrMismatch), without keeping it.
func (c *Client) VerifyNAR(ctx context.Context, ni *narinfo.NarInfo) (NARDigest, error) {
	r, err := c.NAR(ctx, ni)
	if err != nil {
		return NARDigest{}, err
	}
	defer r.Close()
	if _, err := io.Copy(io.Discard, r); err != nil {
		return NARDigest{}, err
	}
	return r.(*narReader).digest(), nil
}

// narURLOK refuses a narinfo URL that would leave the cache.
func narURLOK(u string) error {
	if u == "" || strings.Contains(u, "..") || strings.HasPrefix(u, "/") || strings.Contains(u, "://") ||
		strings.ContainsAny(u, "?#\\") || strings.ContainsFunc(u, func(r rune) bool { return r < 0x21 || r == 0x7f }) {
		return fmt.Errorf("%w: narinfo URL %q leaves the cache", ErrMalformed, u)
	}
	return nil
}

// narReader hashes and counts the decompressed NAR and enforces NarSize.
type narReader struct {
	url      string
	body     io.Closer
	src      *limited // the compressed body under dec
	dec      io.Reader
	closeDec func()
	left     uint64 // bytes still allowed, NarSize+1 at first
	wantSize uint64
	want     [32]byte
	h        hash.Hash
	n        uint64
	err      error
}

func (r *narReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if uint64(len(p)) > r.left {
		p = p[:r.left]
	}
	n, err := r.dec.Read(p)
	r.n += uint64(n)
	r.left -= uint64(n)
	if r.n > r.wantSize {
		// One byte past NarSize: stop decompressing now. The extra byte is
		// not handed out.
		r.err = fmt.Errorf("%s: %w: NAR longer than its NarSize %d (stopped reading)", r.url, ErrMismatch, r.wantSize)
		return n - 1, r.err
	}
	if r.h != nil {
		r.h.Write(p[:n])
	}
	switch {
	case err == io.EOF:
		got := r.digest()
		if got.Size != r.wantSize || r.h != nil && !bytes.Equal(got.SHA256[:], r.want[:]) {
			r.err = fmt.Errorf("%s: %w: NAR is %d bytes sha256 %x, narinfo says %d bytes sha256 %x", r.url, ErrMismatch, got.Size, got.SHA256, r.wantSize, r.want)
			return n, r.err
		}
		r.err = io.EOF
	case err != nil:
		// A decoder's error with a healthy body underneath means corrupt
		// compressed bytes: the cache serves something else than its
		// narinfo describes. A failing body is an I/O error, unless it was
		// longer than FileSize.
		switch ioErr := r.src.ioErr; {
		case errors.Is(ioErr, errTooLong):
			err = fmt.Errorf("%w: %v", ErrMismatch, ioErr)
		case ioErr == nil:
			err = fmt.Errorf("%w: %v", ErrMismatch, err)
		}
		r.err = fmt.Errorf("%s: %w", r.url, err)
	}
	return n, r.err
}

func (r *narReader) digest() NARDigest {
	d := NARDigest{Size: r.n}
	if r.h != nil {
		r.h.Sum(d.SHA256[:0])
	}
	return d
}

func (r *narReader) Close() error {
	if r.closeDec != nil {
		r.closeDec()
	}
	return r.body.Close()
}

// errTooLong: a body exceeded its limit.
var errTooLong = errors.New("body longer than allowed")

// limited reads at most left bytes from r and fails (instead of a silent
// EOF) when r has more. It remembers the first failure of r itself, so
// that a decoder's error can be told apart: with no failure of the body
// underneath, the compressed bytes themselves are corrupt.
type limited struct {
	r     io.Reader
	left  uint64
	what  string
	url   string
	ioErr error
}

func (l *limited) Read(p []byte) (int, error) {
	if l.left == 0 {
		var one [1]byte
		n, err := io.ReadAtLeast(l.r, one[:], 1)
		if n > 0 {
			l.ioErr = fmt.Errorf("%s: %w", l.what, errTooLong)
			return 0, l.ioErr
		}
		if err != io.EOF {
			l.ioErr = err
		}
		return 0, err
	}
	if uint64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= uint64(n)
	if err != nil && err != io.EOF {
		l.ioErr = err
	}
	return n, err
}
