package nardiff

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/nix-community/go-nix/pkg/nar"
)

// Diff compares the NARs read from a and b. It returns the report also
// with an error when a hard limit or the ctx cut it short (the report
// then covers what was read); errors match ErrLimit, ErrMalformed or the
// ctx's error.
func Diff(ctx context.Context, a, b io.Reader, opts Options) (*Report, error) {
	o := opts.withDefaults()
	d := &differ{ctx: ctx, o: o, lim: o.Limits, r: &Report{LabelA: o.LabelA, LabelB: o.LabelB}}
	err := d.walk(a, b)
	d.r.aggregate()
	if err != nil {
		d.note("stopped early: %v", err)
	}
	return d.r, err
}

// differ holds the state of one Diff.
type differ struct {
	ctx  context.Context
	o    Options
	lim  Limits
	r    *Report
	out  int   // bytes of detail text kept so far
	left int64 // decompression budget of the current top-level file
	full bool  // MaxDiffs reached
	cut  bool  // MaxOutput reached
	bufA []byte
	bufB []byte
}

// stream is one side of the merge walk.
type stream struct {
	label string
	g     *guard
	nr    *nar.Reader
	hdr   *nar.Header // current entry; nil at the end
	n     int
}

// close ends the go-nix reader's parser goroutine. Its Close alone leaks
// the goroutine (and the buffer it holds) when the NAR was not read to
// the end: the parser then blocks forever sending its final result. So
// the input is cut off and Next called until the parser reports the cut
// and exits; a parser already done answers at once.
func (s *stream) close() {
	s.g.stop.Store(true)
	for range 1000 {
		if _, err := s.nr.Next(); err != nil {
			return
		}
	}
}

func (s *stream) next(max int) error {
	h, err := s.nr.Next()
	if errors.Is(err, io.EOF) {
		s.hdr = nil
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrMalformed, s.label, err)
	}
	if s.n++; s.n > max {
		return fmt.Errorf("%w: more than %d entries in %s", ErrLimit, max, s.label)
	}
	s.hdr = h
	return nil
}

func open(r io.Reader, label string) (*stream, error) {
	// Small, so that reads of file contents (larger) bypass it: no copy.
	g := &guard{r: bufio.NewReaderSize(r, 64<<10)}
	// A NAR in a file or in memory can be read again: large files are
	// then hashed only when they differ (see differ.stream).
	if at, ok := r.(io.ReaderAt); ok {
		if sk, ok := r.(io.Seeker); ok {
			if base, err := sk.Seek(0, io.SeekCurrent); err == nil {
				g.at, g.base = at, base
			}
		}
	}
	nr, err := nar.NewReader(g)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, label, err)
	}
	return &stream{label: label, g: g, nr: nr}, nil
}

func (d *differ) walk(a, b io.Reader) error {
	sa, err := open(a, d.o.LabelA)
	if err != nil {
		return err
	}
	defer sa.close()
	sb, err := open(b, d.o.LabelB)
	if err != nil {
		return err
	}
	defer sb.close()
	defer func() { d.r.EntriesA, d.r.EntriesB = sa.n, sb.n }()
	if err := sa.next(d.lim.MaxEntries); err != nil {
		return err
	}
	if err := sb.next(d.lim.MaxEntries); err != nil {
		return err
	}
	for sa.hdr != nil || sb.hdr != nil {
		if err := d.ctx.Err(); err != nil {
			return fmt.Errorf("nardiff: %w", err)
		}
		c := 0
		switch {
		case sa.hdr == nil:
			c = 1
		case sb.hdr == nil:
			c = -1
		default:
			c = cmpPath(sa.hdr.Path, sb.hdr.Path)
		}
		switch {
		case c < 0:
			d.add(FileDiff{Path: sa.hdr.Path, Kind: OnlyA, A: side(sa.hdr), Offset: -1})
			err = sa.next(d.lim.MaxEntries)
		case c > 0:
			d.add(FileDiff{Path: sb.hdr.Path, Kind: OnlyB, B: side(sb.hdr), Offset: -1})
			err = sb.next(d.lim.MaxEntries)
		default:
			if err = d.entry(sa, sb); err == nil {
				if err = sa.next(d.lim.MaxEntries); err == nil {
					err = sb.next(d.lim.MaxEntries)
				}
			}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// cmpPath orders NAR paths the way a NAR lists them: depth first, each
// directory's entries sorted by name.
func cmpPath(a, b string) int {
	switch {
	case a == b:
		return 0
	case nar.PathIsLexicographicallyOrdered(a, b):
		return -1
	}
	return 1
}

func side(h *nar.Header) *Side {
	s := &Side{Type: h.Type.String(), Executable: h.Executable, LinkTarget: h.LinkTarget}
	if h.Type == nar.TypeRegular {
		s.Size = h.Size
	}
	return s
}

// entry compares one path present on both sides.
func (d *differ) entry(sa, sb *stream) error {
	ha, hb := sa.hdr, sb.hdr
	fd := FileDiff{Path: ha.Path, A: side(ha), B: side(hb), Offset: -1}
	switch {
	case ha.Type != hb.Type:
		fd.Kind = Type
		d.add(fd)
		return nil
	case ha.Type == nar.TypeSymlink:
		if ha.LinkTarget != hb.LinkTarget {
			fd.Kind = Symlink
			fd.Causes = causesIn([]byte(ha.LinkTarget), []byte(hb.LinkTarget), d.o, true)
			d.add(fd)
		}
		return nil
	case ha.Type != nar.TypeRegular:
		return nil
	}
	// The parser has just read the contents' length: they start at the
	// offset it reached (the header came through a channel after that).
	differs, err := d.contents(&fd, sa.nr, sb.nr, ha.Size, hb.Size, sa.g.contentsAt())
	if err != nil {
		return err
	}
	if ha.Executable != hb.Executable {
		if !differs {
			fd.Kind = Mode
		} else {
			fd.Notes = append(fd.Notes, "the executable bit differs too")
		}
		differs = true
	}
	if differs {
		d.add(fd)
	}
	return nil
}

// add records one differing entry, within MaxDiffs and MaxOutput.
func (d *differ) add(fd FileDiff) {
	d.r.Differing++
	if len(d.r.Files) >= d.lim.MaxDiffs {
		if !d.full {
			d.full = true
			d.note("more than %d differing entries: the rest are only counted", d.lim.MaxDiffs)
		}
		return
	}
	d.r.Files = append(d.r.Files, fd)
}

func (d *differ) note(format string, args ...any) {
	d.r.Notes = append(d.r.Notes, fmt.Sprintf(format, args...))
}

// spend accounts n bytes of detail text; false when MaxOutput is used up,
// and the detail should be dropped.
func (d *differ) spend(n int) bool {
	if d.out+n > d.lim.MaxOutput {
		if !d.cut {
			d.cut = true
			d.note("report output reached %d bytes: further details dropped", d.lim.MaxOutput)
		}
		return false
	}
	d.out += n
	return true
}

// guard is a NAR's input as the go-nix reader sees it. It turns the end
// of input into io.ErrUnexpectedEOF: a complete NAR is parsed without
// reading past its end, and go-nix's reader takes an io.EOF at a token
// boundary for the end of a valid NAR, so a truncated one would otherwise
// read as complete. Once stopped it fails every read (see stream.close).
type guard struct {
	r    io.Reader
	stop atomic.Bool
	n    int64 // bytes given to the parser; only the parser goroutine writes it
	// at, when set, reads the NAR again from offset base (its start).
	at   io.ReaderAt
	base int64
}

// contentsAt returns a reader of the current file's contents from their
// start, when the input can be read again; else nil. Called between Next
// and the first Read of the contents.
func (g *guard) contentsAt() *io.SectionReader {
	if g.at == nil {
		return nil
	}
	return io.NewSectionReader(g.at, g.base+g.n, 1<<62)
}

var errStopped = errors.New("nardiff: input closed")

func (g *guard) Read(p []byte) (int, error) {
	if g.stop.Load() {
		return 0, errStopped
	}
	k, err := g.r.Read(p)
	g.n += int64(k)
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return k, err
}
