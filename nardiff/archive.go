package nardiff

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// member is one entry of an archive, its contents read under the limits.
type member struct {
	name  string
	mode  string
	mtime time.Time
	owner string
	data  []byte
}

// readBounded reads r up to MaxMemberSize and the file's remaining
// decompression budget; cut reports that the member was longer.
func (d *differ) readBounded(r io.Reader) (data []byte, cut bool, err error) {
	limit := min(d.lim.MaxMemberSize, d.left)
	data, err = io.ReadAll(io.LimitReader(r, limit+1))
	if int64(len(data)) > limit {
		data, cut = data[:limit], true
	}
	d.left -= int64(len(data))
	return data, cut, err
}

func (d *differ) bombNote(fd *FileDiff, name string) {
	fd.Notes = append(fd.Notes, fmt.Sprintf("%s: decompressed past the limit (%d bytes per member, %d per file): compared the first bytes only", name, d.lim.MaxMemberSize, d.lim.MaxExpand))
}

// gzip compares the headers (a differing mtime is the classic cause),
// then the decompressed contents.
func (d *differ) gzip(fd *FileDiff, a, b []byte, depth int) {
	za, errA := gzip.NewReader(bytes.NewReader(a))
	zb, errB := gzip.NewReader(bytes.NewReader(b))
	if errA != nil || errB != nil {
		fd.Notes = append(fd.Notes, fmt.Sprintf("unreadable gzip: %v", errors.Join(errA, errB)))
		d.window(fd, a, b, firstDiff(a, b), 0)
		return
	}
	if !za.ModTime.Equal(zb.ModTime) {
		fd.Causes = mergeCauses(fd.Causes, []Cause{{Kind: CauseTimestamp, Evidence: fmt.Sprintf("gzip header mtime %s vs %s", za.ModTime.UTC().Format(time.RFC3339), zb.ModTime.UTC().Format(time.RFC3339))}})
	}
	if za.Name != zb.Name {
		fd.Notes = append(fd.Notes, fmt.Sprintf("gzip header name %q vs %q", za.Name, zb.Name))
	}
	da, cutA, errA := d.readBounded(za)
	db, cutB, errB := d.readBounded(zb)
	if cutA || cutB {
		d.bombNote(fd, "gzip")
	}
	if errA != nil || errB != nil {
		fd.Notes = append(fd.Notes, fmt.Sprintf("gzip stream: %v", errors.Join(errA, errB)))
	}
	if bytes.Equal(da, db) {
		fd.Notes = append(fd.Notes, "decompressed contents are equal: only the gzip header or compression differs")
		if len(fd.Causes) == 0 {
			d.window(fd, a, b, firstDiff(a, b), 0)
		}
		return
	}
	inner := strings.TrimSuffix(strings.TrimSuffix(baseName(fd.Path), ".gz"), ".tgz")
	m := FileDiff{Path: inner, Kind: Contents, A: &Side{Type: "regular", Size: int64(len(da))}, B: &Side{Type: "regular", Size: int64(len(db))}, Offset: -1}
	d.blobs(&m, da, db, depth+1)
	fd.Members = append(fd.Members, m)
}

func baseName(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}

func (d *differ) tar(fd *FileDiff, a, b []byte, depth int) {
	ma, errA := d.tarMembers(fd, a)
	mb, errB := d.tarMembers(fd, b)
	if errA != nil || errB != nil {
		fd.Notes = append(fd.Notes, fmt.Sprintf("tar: %v", errors.Join(errA, errB)))
	}
	d.members(fd, ma, mb, depth)
}

func (d *differ) tarMembers(fd *FileDiff, b []byte) ([]member, error) {
	tr := tar.NewReader(bytes.NewReader(b))
	var ms []member
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return ms, nil
		}
		if err != nil {
			return ms, err
		}
		if len(ms) >= d.lim.MaxMembers {
			fd.Notes = append(fd.Notes, fmt.Sprintf("more than %d members: the rest not compared", d.lim.MaxMembers))
			return ms, nil
		}
		data, cut, err := d.readBounded(tr)
		if cut {
			d.bombNote(fd, h.Name)
		}
		ms = append(ms, member{
			name: h.Name, mode: fmt.Sprintf("%c %o", h.Typeflag, h.Mode) + linkOf(h.Linkname),
			mtime: h.ModTime, owner: fmt.Sprintf("%d:%d %s:%s", h.Uid, h.Gid, h.Uname, h.Gname), data: data,
		})
		if err != nil {
			return ms, err
		}
	}
}

func linkOf(l string) string {
	if l == "" {
		return ""
	}
	return " -> " + l
}

func (d *differ) zip(fd *FileDiff, a, b []byte, depth int) {
	ma, errA := d.zipMembers(fd, a)
	mb, errB := d.zipMembers(fd, b)
	if errA != nil || errB != nil {
		fd.Notes = append(fd.Notes, fmt.Sprintf("zip: %v", errors.Join(errA, errB)))
		if ma == nil || mb == nil {
			d.window(fd, a, b, firstDiff(a, b), 0)
			return
		}
	}
	d.members(fd, ma, mb, depth)
}

func (d *differ) zipMembers(fd *FileDiff, b []byte) ([]member, error) {
	zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		return nil, err
	}
	var ms []member
	for i, f := range zr.File {
		if i >= d.lim.MaxMembers {
			fd.Notes = append(fd.Notes, fmt.Sprintf("more than %d members: the rest not compared", d.lim.MaxMembers))
			break
		}
		m := member{name: f.Name, mode: f.Mode().String(), mtime: f.Modified}
		if rc, err := f.Open(); err != nil {
			m.owner = "unreadable: " + err.Error()
		} else {
			data, cut, err := d.readBounded(rc)
			rc.Close()
			if cut {
				d.bombNote(fd, f.Name)
			}
			if err != nil && !errors.Is(err, zip.ErrChecksum) {
				m.owner = "unreadable: " + err.Error()
			}
			m.data = data
		}
		ms = append(ms, m)
	}
	return ms, nil
}

// members compares two archives' member lists: order, presence, mode,
// mtime and contents (recursively).
func (d *differ) members(fd *FileDiff, ma, mb []member, depth int) {
	names := func(ms []member) []string {
		out := make([]string, len(ms))
		for i, m := range ms {
			out[i] = m.name
		}
		return out
	}
	na, nb := names(ma), names(mb)
	if !slices.Equal(na, nb) {
		sa, sb := slices.Clone(na), slices.Clone(nb)
		slices.Sort(sa)
		slices.Sort(sb)
		if slices.Equal(sa, sb) {
			fd.Causes = mergeCauses(fd.Causes, []Cause{{Kind: CauseFileOrder, Evidence: fmt.Sprintf("the same %d members in another order", len(na))}})
			fd.Members = append(fd.Members, FileDiff{Path: "(member order)", Kind: Order, Offset: -1})
		}
	}
	byName := map[string]*member{}
	for i := range mb {
		byName[mb[i].name] = &mb[i]
	}
	seen := map[string]bool{}
	for i := range ma {
		x := &ma[i]
		seen[x.name] = true
		y, ok := byName[x.name]
		if !ok {
			fd.Members = append(fd.Members, FileDiff{Path: x.name, Kind: OnlyA, A: &Side{Type: "regular", Size: int64(len(x.data))}, Offset: -1})
			continue
		}
		m := FileDiff{Path: x.name, A: &Side{Type: "regular", Size: int64(len(x.data))}, B: &Side{Type: "regular", Size: int64(len(y.data))}, Offset: -1}
		changed := false
		if x.mode != y.mode {
			m.Kind, changed = Mode, true
			m.Notes = append(m.Notes, fmt.Sprintf("mode %s vs %s", x.mode, y.mode))
		}
		if x.owner != y.owner {
			changed = true
			m.Notes = append(m.Notes, fmt.Sprintf("owner %s vs %s", x.owner, y.owner))
		}
		if !x.mtime.Equal(y.mtime) {
			changed = true
			m.Causes = append(m.Causes, Cause{Kind: CauseTimestamp, Evidence: fmt.Sprintf("member mtime %s vs %s", x.mtime.UTC().Format(time.RFC3339), y.mtime.UTC().Format(time.RFC3339))})
		}
		if !bytes.Equal(x.data, y.data) {
			changed = true
			d.blobs(&m, x.data, y.data, depth+1)
		} else if m.Kind == "" {
			m.Kind = Contents
			m.Notes = append(m.Notes, "contents equal, metadata differs")
		}
		if changed {
			fd.Members = append(fd.Members, m)
		}
	}
	for _, y := range mb {
		if !seen[y.name] {
			fd.Members = append(fd.Members, FileDiff{Path: y.name, Kind: OnlyB, B: &Side{Type: "regular", Size: int64(len(y.data))}, Offset: -1})
		}
	}
	// The file's own causes are those of its members.
	for _, m := range fd.Members {
		fd.Causes = mergeCauses(fd.Causes, m.Causes)
	}
	if len(fd.Members) == 0 {
		fd.Notes = append(fd.Notes, "members are equal: the archive framing differs")
	}
}
