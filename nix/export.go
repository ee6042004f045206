package nix

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/nix-community/go-nix/pkg/wire"

	"codeberg.org/provenix/provenix/contentaddr"
	"codeberg.org/provenix/provenix/storepath"
)

// ErrBadExport means an export stream is malformed or truncated, or holds
// a path whose name does not match its contents.
var ErrBadExport = errors.New("nix: bad export stream")

const (
	// exportMagic follows each NAR in a nix-store --export stream ("NIXE").
	exportMagic = 0x4558494e
	// Bounds on the strings of an export record and of a NAR; Nix's own
	// are PATH_MAX-like too.
	maxPathLen    = 4096
	maxReferences = 1 << 16
	maxNARDepth   = 1024
	maxNameLen    = 255
)

// Requisites returns the closure of paths (nix-store --query
// --requisites), each path once. For a .drv that is what building it needs
// besides its inputs' outputs: the .drv files of the derivation and of its
// inputs, and their sources. For outputs it is their runtime closure.
func (n *Nix) Requisites(ctx context.Context, paths ...string) ([]string, error) {
	if len(paths) == 0 {
		return nil, nil
	}
	out, err := n.run(ctx, "nix-store", n.args(append([]string{"--query", "--requisites"}, paths...)...)...)
	if err != nil {
		return nil, err
	}
	return lines(out), nil
}

// Export writes paths to w as a nix-store --export stream: each path's NAR
// with its references, dependencies first. It streams; nothing is held in
// memory. When it fails, w may have received part of the stream.
func (n *Nix) Export(ctx context.Context, w io.Writer, paths ...string) error {
	if len(paths) == 0 {
		return errors.New("nix: export: no paths")
	}
	return n.runTo(ctx, w, "nix-store", n.args(append([]string{"--export"}, paths...)...)...)
}

// Import adds the paths of a nix-store --export stream to the store, and
// returns them. It is nix-store --import behind a check, because the
// stream usually comes from another machine and is signed by no one:
// every path must be content-addressed, and its name must be the one its
// contents and references give, so whoever wrote the stream cannot put
// other contents under a path the caller asks for. Content-addressed are
// .drv files and other text files (builtins.toFile), and sources added by
// path (recursive or flat sha256): exactly what the closure of a .drv is
// made of. A path that is not (the output of some derivation, say) is
// accepted only when it is valid here already, and is then skipped.
// References and names are part of the address, so they are checked too;
// derivers are not, and are dropped. Nix itself checks that each .drv
// names the outputs its contents give.
//
// A malformed, truncated or forged stream fails with ErrBadExport. The
// paths before the bad one may have been imported: each was checked, so
// they are what their names say. Each NAR is spooled to a temporary file
// before it goes to Nix (which then holds it in memory, as nix-store
// --import always does), so Import's own memory does not grow with it.
//
// nix-store --import does not check signatures, so no require-sigs
// setting is needed for a local or chroot store (Root). A store behind a
// nix-daemon refuses unsigned paths from users it does not trust.
func (n *Nix) Import(ctx context.Context, r io.Reader) ([]string, error) {
	spool, err := os.CreateTemp("", "provenix-import-*.nar")
	if err != nil {
		return nil, fmt.Errorf("nix: import: %w", err)
	}
	defer func() {
		spool.Close()
		os.Remove(spool.Name())
	}()

	// The validity checks below run beside nix-store --import: two Nix
	// processes initialising a fresh store at once race on its symlinks.
	if _, err := os.Stat(filepath.Join(n.RealPath("/"), "nix", "var", "nix", "db", "db.sqlite")); errors.Is(err, fs.ErrNotExist) {
		if _, err := n.run(ctx, "nix-store", n.args("--init")...); err != nil {
			return nil, fmt.Errorf("nix: import: %w", err)
		}
	}
	args := n.args("--import")
	cmd, stderr, err := n.command(ctx, "nix-store", args...)
	if err != nil {
		return nil, err
	}
	var stdout strings.Builder
	cmd.Stdout = &stdout
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("nix: import: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("nix: import: %w", err)
	}
	werr := make(chan error, 1)
	go func() {
		bw := bufio.NewWriterSize(stdin, 64<<10)
		err := filterExport(r, bw, spool, func(p string) (bool, error) {
			invalid, err := n.Invalid(ctx, p)
			return len(invalid) == 0, err
		})
		if err == nil {
			if err = bw.Flush(); err != nil {
				err = &writeError{err}
			}
		}
		// Closing stdin without the end marker makes nix-store fail: a
		// stream we refused is never completed.
		if cerr := stdin.Close(); err == nil && cerr != nil {
			err = &writeError{cerr}
		}
		werr <- err
	}()
	// Writing ends first: Wait closes the stdin pipe once nix-store exits,
	// which would race with the writer's own Close. If nix-store dies
	// early, the writer's next write fails and it returns.
	ferr := <-werr
	runErr := commandError(cmd.Wait(), "nix-store", args, stderr)
	var we *writeError
	switch {
	case errors.Is(ferr, ErrBadExport):
		// Checking the stream failed: that is why nix-store saw it end
		// early. The error says where.
		return nil, ferr
	case ferr != nil && !errors.As(ferr, &we):
		// So did reading it.
		return nil, fmt.Errorf("nix: import: %w", ferr)
	case runErr != nil:
		return nil, runErr
	case ferr != nil:
		return nil, fmt.Errorf("nix: import: %w", ferr)
	}
	return lines([]byte(stdout.String())), nil
}

// writeError is a failure to write to nix-store: when nix-store failed
// too, its error says why.
type writeError struct{ err error }

func (e *writeError) Error() string { return "write to nix-store: " + e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }

// exportRecord is one path of an export stream, without its NAR.
type exportRecord struct {
	path       string
	references []string
	deriver    string
}

// filterExport reads an export stream from r and writes to w the records
// that pass checkContentAddress, each NAR spooled through spool first;
// records that do not pass are skipped when valid reports their path
// valid here, and fail the stream otherwise. w gets the end marker only
// when the whole stream was read and checked. An error of r itself is
// returned as is, not as ErrBadExport: the stream may be fine.
func filterExport(r io.Reader, w io.Writer, spool *os.File, valid func(string) (bool, error)) error {
	src := &errReader{r: r}
	err := filterRecords(bufio.NewReaderSize(src, 64<<10), w, spool, valid)
	if err != nil && src.err != nil {
		return fmt.Errorf("read export stream: %w", src.err)
	}
	return err
}

// errReader remembers the first error of r other than io.EOF.
type errReader struct {
	r   io.Reader
	err error
}

func (e *errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF && e.err == nil {
		e.err = err
	}
	return n, err
}

func filterRecords(r io.Reader, w io.Writer, spool *os.File, valid func(string) (bool, error)) error {
	for i := 0; ; i++ {
		if more, err := nextRecord(r, i); err != nil {
			return err
		} else if !more {
			break
		}
		if _, err := spool.Seek(0, io.SeekStart); err != nil {
			return err
		}
		if err := spool.Truncate(0); err != nil {
			return err
		}
		narHash, fileHash := sha256.New(), sha256.New()
		rec, flat, err := readRecord(r, i, io.MultiWriter(spool, narHash), fileHash)
		if err != nil {
			return err
		}
		var nh, fh [32]byte
		copy(nh[:], narHash.Sum(nil))
		var fileSum *[32]byte
		if flat {
			copy(fh[:], fileHash.Sum(nil))
			fileSum = &fh
		}
		if caErr := checkContentAddress(rec.path, rec.references, nh, fileSum); caErr != nil {
			ok, err := valid(rec.path)
			if err != nil {
				return fmt.Errorf("record %d (%s): %w", i, rec.path, err)
			}
			if !ok {
				return fmt.Errorf("%w: record %d: %w", ErrBadExport, i, caErr)
			}
			continue // ours already: keep our copy
		}
		if err := writeRecord(w, spool, rec); err != nil {
			return &writeError{err}
		}
	}
	if err := expectEnd(r); err != nil {
		return err
	}
	if err := wire.WriteUint64(w, 0); err != nil {
		return &writeError{err}
	}
	return nil
}

func badExport(i int, p, what string, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: record %d: %s: truncated stream", ErrBadExport, i, what)
	}
	if p != "" {
		return fmt.Errorf("%w: record %d (%s): %s: %w", ErrBadExport, i, p, what, err)
	}
	return fmt.Errorf("%w: record %d: %s: %w", ErrBadExport, i, what, err)
}

// readRecord reads record i after its marker: the NAR, every byte of
// which goes to nar and the contents of a regular file (flat) to file,
// then the trailer.
func readRecord(r io.Reader, i int, nar io.Writer, file hash.Hash) (rec exportRecord, flat bool, err error) {
	flat, err = readNAR(io.TeeReader(r, nar), file)
	if err != nil {
		return rec, false, badExport(i, "", "NAR", err)
	}
	rec, err = readRecordTrailer(r)
	if err != nil {
		return rec, false, badExport(i, "", "trailer", err)
	}
	return rec, flat, nil
}

// expectEnd checks that nothing follows the end marker: a stream with
// trailing bytes is not the one that was exported. Reading to the end
// also lets a reader that checks a digest at EOF (a staged object) do so.
func expectEnd(r io.Reader) error {
	var b [1]byte
	switch _, err := io.ReadFull(r, b[:]); {
	case err == nil:
		return fmt.Errorf("%w: data after the end of the stream", ErrBadExport)
	case !errors.Is(err, io.EOF):
		return fmt.Errorf("read after the end of the stream: %w", err)
	}
	return nil
}

// readRecordTrailer reads what follows a NAR in an export record.
func readRecordTrailer(r io.Reader) (exportRecord, error) {
	var rec exportRecord
	magic, err := wire.ReadUint64(r)
	if err != nil {
		return rec, err
	}
	if magic != exportMagic {
		return rec, fmt.Errorf("magic %#x, want %#x", magic, exportMagic)
	}
	if rec.path, err = wire.ReadString(r, maxPathLen); err != nil {
		return rec, fmt.Errorf("path: %w", err)
	}
	if err := storepath.Check(rec.path); err != nil {
		return rec, fmt.Errorf("path %q: %w", rec.path, err)
	}
	nrefs, err := wire.ReadUint64(r)
	if err != nil {
		return rec, err
	}
	if nrefs > maxReferences {
		return rec, fmt.Errorf("%s: %d references", rec.path, nrefs)
	}
	for range nrefs {
		ref, err := wire.ReadString(r, maxPathLen)
		if err != nil {
			return rec, fmt.Errorf("%s: reference: %w", rec.path, err)
		}
		if err := storepath.Check(ref); err != nil {
			return rec, fmt.Errorf("%s: reference %q: %w", rec.path, ref, err)
		}
		rec.references = append(rec.references, ref)
	}
	if rec.deriver, err = wire.ReadString(r, maxPathLen); err != nil {
		return rec, fmt.Errorf("%s: deriver: %w", rec.path, err)
	}
	sig, err := wire.ReadUint64(r)
	if err != nil {
		return rec, err
	}
	switch sig {
	case 0:
	case 1: // a legacy signature, which Nix ignores too
		if _, err := wire.ReadString(r, maxPathLen); err != nil {
			return rec, fmt.Errorf("%s: legacy signature: %w", rec.path, err)
		}
	default:
		return rec, fmt.Errorf("%s: signature marker %d", rec.path, sig)
	}
	return rec, nil
}

// writeRecord writes one export record, its NAR read back from spool. The
// deriver is dropped: a content-addressed path does not need one, and
// nothing vouches for it.
func writeRecord(w io.Writer, spool *os.File, rec exportRecord) error {
	if err := wire.WriteUint64(w, 1); err != nil {
		return err
	}
	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if _, err := io.Copy(w, spool); err != nil {
		return err
	}
	if err := wire.WriteUint64(w, exportMagic); err != nil {
		return err
	}
	if err := wire.WriteString(w, rec.path); err != nil {
		return err
	}
	if err := wire.WriteUint64(w, uint64(len(rec.references))); err != nil {
		return err
	}
	for _, ref := range rec.references {
		if err := wire.WriteString(w, ref); err != nil {
			return err
		}
	}
	if err := wire.WriteString(w, ""); err != nil {
		return err
	}
	return wire.WriteUint64(w, 0)
}

// readNAR reads one NAR from r, checking its structure (canonical entry
// order, valid names, zero padding). When the NAR is a single regular,
// non-executable file it writes the file's contents to fileHash and
// returns true.
func readNAR(r io.Reader, fileHash hash.Hash) (flat bool, err error) {
	if err := expectToken(r, "nix-archive-1"); err != nil {
		return false, err
	}
	return readNode(r, fileHash, 0)
}

func readNode(r io.Reader, fileHash hash.Hash, depth int) (flat bool, err error) {
	if depth > maxNARDepth {
		return false, errors.New("NAR nested too deep")
	}
	if err := expectToken(r, "("); err != nil {
		return false, err
	}
	if err := expectToken(r, "type"); err != nil {
		return false, err
	}
	typ, err := wire.ReadString(r, 16)
	if err != nil {
		return false, err
	}
	switch typ {
	case "regular":
		tok, err := wire.ReadString(r, 16)
		if err != nil {
			return false, err
		}
		executable := tok == "executable"
		if executable {
			if err := expectToken(r, ""); err != nil {
				return false, err
			}
			if tok, err = wire.ReadString(r, 16); err != nil {
				return false, err
			}
		}
		if tok != "contents" {
			return false, fmt.Errorf("NAR: token %q, want \"contents\"", tok)
		}
		size, err := wire.ReadUint64(r)
		if err != nil {
			return false, err
		}
		dst := io.Discard
		flat = depth == 0 && !executable
		if flat {
			dst = fileHash
		}
		if size > 1<<62 {
			return false, fmt.Errorf("NAR: file of %d bytes", size)
		}
		if _, err := io.CopyN(dst, r, int64(size)); err != nil {
			return false, err
		}
		if pad := size % 8; pad != 0 {
			var b [8]byte
			if _, err := io.ReadFull(r, b[:8-pad]); err != nil {
				return false, err
			}
			if b != [8]byte{} {
				return false, errors.New("NAR: non-zero padding")
			}
		}
	case "symlink":
		if err := expectToken(r, "target"); err != nil {
			return false, err
		}
		if _, err := wire.ReadString(r, maxPathLen); err != nil {
			return false, err
		}
	case "directory":
		prev := ""
		for {
			tok, err := wire.ReadString(r, 16)
			if err != nil {
				return false, err
			}
			if tok == ")" {
				return false, nil
			}
			if tok != "entry" {
				return false, fmt.Errorf("NAR: token %q in a directory", tok)
			}
			if err := expectToken(r, "("); err != nil {
				return false, err
			}
			if err := expectToken(r, "name"); err != nil {
				return false, err
			}
			name, err := wire.ReadString(r, maxNameLen)
			if err != nil {
				return false, err
			}
			if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
				return false, fmt.Errorf("NAR: invalid entry name %q", name)
			}
			if prev != "" && name <= prev {
				return false, fmt.Errorf("NAR: entry %q after %q: not in canonical order", name, prev)
			}
			prev = name
			if err := expectToken(r, "node"); err != nil {
				return false, err
			}
			if _, err := readNode(r, fileHash, depth+1); err != nil {
				return false, err
			}
			if err := expectToken(r, ")"); err != nil {
				return false, err
			}
		}
	default:
		return false, fmt.Errorf("NAR: unknown node type %q", typ)
	}
	return flat, expectToken(r, ")")
}

func expectToken(r io.Reader, want string) error {
	got, err := wire.ReadString(r, uint64(max(len(want), 16)))
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("NAR: token %q, want %q", got, want)
	}
	return nil
}

// checkContentAddress checks that p is the store path Nix gives these
// contents: a text file (a .drv, builtins.toFile) from the sha256 of its
// contents and its references; a source added by path from the sha256 of
// its NAR and its references ("source"), or, flat, from the sha256 of its
// contents. fileSum is the contents' sha256 when the NAR is a single
// regular non-executable file, nil otherwise.
func checkContentAddress(p string, refs []string, narSum [32]byte, fileSum *[32]byte) error {
	if err := storepath.Check(p); err != nil {
		return err
	}
	name := storepath.Name(p)
	self := slices.Contains(refs, p)
	others := slices.DeleteFunc(slices.Clone(refs), func(s string) bool { return s == p })

	var candidates []string
	add := func(c contentaddr.CA, refs []string, self bool) {
		if sp, err := c.StorePath(storepath.Dir, name, refs, self); err == nil {
			candidates = append(candidates, sp)
		}
	}
	if fileSum != nil && !self {
		add(contentaddr.CA{Method: contentaddr.Text, Hash: *fileSum}, others, false)
	}
	add(contentaddr.CA{Method: contentaddr.Recursive, Hash: narSum}, others, self)
	if fileSum != nil && len(refs) == 0 {
		add(contentaddr.CA{Method: contentaddr.Flat, Hash: *fileSum}, nil, false)
	}
	if slices.Contains(candidates, p) {
		return nil
	}
	return fmt.Errorf("%s is not the content address of its contents and references (not a .drv, text file or source, or altered)", p)
}

// nextRecord reads the marker before record i of an export stream: true
// when a record follows, false at the end.
func nextRecord(r io.Reader, i int) (bool, error) {
	more, err := wire.ReadUint64(r)
	if err != nil {
		return false, badExport(i, "", "record marker", err)
	}
	switch more {
	case 0:
		return false, nil
	case 1:
		return true, nil
	}
	return false, fmt.Errorf("%w: record %d: marker %d, not a nix-store --export stream", ErrBadExport, i, more)
}
