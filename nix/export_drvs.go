package nix

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"
	"sync"
)

// ExportDrvLimits bound what ReadExportDerivations keeps of a stream that
// anyone with staging rights may have written.
type ExportDrvLimits struct {
	// MaxDrvSize is the largest .drv kept, in bytes (DefaultMaxDrvSize
	// when 0). Nixpkgs' largest are a few hundred KiB.
	MaxDrvSize int
	// MaxDrvs is how many .drv records a stream may hold (DefaultMaxDrvs
	// when 0).
	MaxDrvs int
	// MaxTotal bounds the .drv bytes kept in all (DefaultMaxDrvTotal when
	// 0): the memory a caller holds for one stream.
	MaxTotal int64
}

// Defaults of ExportDrvLimits.
const (
	DefaultMaxDrvSize  = 8 << 20
	DefaultMaxDrvs     = 100_000
	DefaultMaxDrvTotal = 256 << 20
)

// ErrExportLimit: an export stream holds more .drv data than the limits
// allow.
var ErrExportLimit = errors.New("nix: export stream over its limits")

// drvReaders holds the 64 KiB read buffers of ReadExportDerivations: a
// pusher reads an export per result, and a fresh buffer each was a good
// part of the garbage it made.
var drvReaders = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 64<<10) }}

// ReadExportDerivations reads a nix-store --export stream and calls fn
// with the path and contents of each .drv file in it, in stream order.
// Other records (sources) are read through and dropped, so memory is
// bounded by the limits whatever the stream's size. Each .drv passes
// Import's content-address check first: its path is the one its contents
// and references give, so the contents fn gets are what the path names
// even when the stream came from someone else. A .drv that fails it, a
// malformed stream or trailing data fail with ErrBadExport; more than the
// limits with ErrExportLimit; an error of r, or of fn, as is.
func ReadExportDerivations(r io.Reader, lim ExportDrvLimits, fn func(path string, contents []byte) error) error {
	if lim.MaxDrvSize <= 0 {
		lim.MaxDrvSize = DefaultMaxDrvSize
	}
	if lim.MaxDrvs <= 0 {
		lim.MaxDrvs = DefaultMaxDrvs
	}
	if lim.MaxTotal <= 0 {
		lim.MaxTotal = DefaultMaxDrvTotal
	}
	src := &errReader{r: r}
	br := drvReaders.Get().(*bufio.Reader)
	br.Reset(src)
	defer func() {
		br.Reset(nil) // let go of r
		drvReaders.Put(br)
	}()
	err := readDrvRecords(br, lim, fn)
	if err != nil && src.err != nil && errors.Is(err, ErrBadExport) {
		return fmt.Errorf("read export stream: %w", src.err)
	}
	return err
}

func readDrvRecords(r io.Reader, lim ExportDrvLimits, fn func(string, []byte) error) error {
	var (
		drvs  int
		total int64
	)
	for i := 0; ; i++ {
		if more, err := nextRecord(r, i); err != nil {
			return err
		} else if !more {
			break
		}
		narHash := sha256.New()
		file := &capture{Hash: sha256.New(), max: lim.MaxDrvSize}
		rec, flat, err := readRecord(r, i, narHash, file)
		if err != nil {
			return err
		}
		if !strings.HasSuffix(rec.path, ".drv") {
			continue
		}
		if !flat {
			return fmt.Errorf("%w: record %d: %s is not a regular file", ErrBadExport, i, rec.path)
		}
		if file.over {
			return fmt.Errorf("%w: %s is larger than %d bytes", ErrExportLimit, rec.path, lim.MaxDrvSize)
		}
		if drvs++; drvs > lim.MaxDrvs {
			return fmt.Errorf("%w: more than %d .drv files", ErrExportLimit, lim.MaxDrvs)
		}
		if total += int64(file.buf.Len()); total > lim.MaxTotal {
			return fmt.Errorf("%w: more than %d bytes of .drv files", ErrExportLimit, lim.MaxTotal)
		}
		var nh, fh [32]byte
		copy(nh[:], narHash.Sum(nil))
		copy(fh[:], file.Sum(nil))
		if err := checkContentAddress(rec.path, rec.references, nh, &fh); err != nil {
			return fmt.Errorf("%w: record %d: %w", ErrBadExport, i, err)
		}
		if err := fn(rec.path, file.buf.Bytes()); err != nil {
			return err
		}
	}
	return expectEnd(r)
}

// capture hashes a flat file's contents and keeps up to max bytes of
// them; over says there were more (the record is then refused if it is
// a .drv, and dropped otherwise, so a large source costs no memory).
type capture struct {
	hash.Hash
	buf  bytes.Buffer
	max  int
	over bool
}

func (c *capture) Write(p []byte) (int, error) {
	c.Hash.Write(p)
	if !c.over {
		if c.buf.Len()+len(p) > c.max {
			c.over = true
			c.buf = bytes.Buffer{}
		} else {
			c.buf.Write(p)
		}
	}
	return len(p), nil
}
