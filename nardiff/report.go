package nardiff

import (
	"fmt"
	"slices"
	"strings"
)

// Kind says how one entry differs.
type Kind string

// Kinds of difference.
const (
	OnlyA    Kind = "only-a"  // the entry exists only in A
	OnlyB    Kind = "only-b"  // the entry exists only in B
	Type     Kind = "type"    // regular file, directory or symlink changed
	Mode     Kind = "mode"    // the executable bit changed
	Symlink  Kind = "symlink" // the symlink target changed
	Contents Kind = "contents"
	// Order: the same entries (lines, archive members) in another order.
	Order Kind = "order"
)

// CauseKind names a well-known cause of unreproducible builds.
type CauseKind string

// Recognised causes.
const (
	CauseTimestamp CauseKind = "timestamp"  // a date or time of the build is embedded
	CauseBuildPath CauseKind = "build-path" // the build directory or a temp dir leaked
	CauseFileOrder CauseKind = "file-order" // the same entries in another order
	CauseRandom    CauseKind = "random-id"  // random identifiers or bytes
)

// Cause is one recognised cause, with what shows it.
type Cause struct {
	Kind     CauseKind `json:"kind"`
	Evidence string    `json:"evidence,omitempty"`
}

// Side describes an entry on one side.
type Side struct {
	Type       string `json:"type"` // "regular", "directory", "symlink"
	Executable bool   `json:"executable,omitempty"`
	Size       int64  `json:"size,omitempty"`
	SHA256     string `json:"sha256,omitempty"` // hex, of the contents
	LinkTarget string `json:"linkTarget,omitempty"`
}

// FileDiff is one differing entry. Path is the NAR path ("/bin/x"), or
// for an archive member the member's name inside its archive.
type FileDiff struct {
	Path string `json:"path"`
	Kind Kind   `json:"kind"`
	A    *Side  `json:"a,omitempty"`
	B    *Side  `json:"b,omitempty"`
	// Format is what the contents were read as: "text", "binary", "elf",
	// "tar", "gzip", "zip".
	Format string `json:"format,omitempty"`
	// Unified is a bounded unified diff of text contents.
	Unified string `json:"unified,omitempty"`
	// Offset is the first differing byte (binaries), -1 when unknown.
	Offset int64 `json:"offset"`
	// HexA and HexB are hex windows around Offset.
	HexA string `json:"hexA,omitempty"`
	HexB string `json:"hexB,omitempty"`
	// Sections are the ELF sections whose contents differ.
	Sections []string `json:"sections,omitempty"`
	// Members are the differing members of an archive (recursively).
	Members []FileDiff `json:"members,omitempty"`
	Causes  []Cause    `json:"causes,omitempty"`
	Notes   []string   `json:"notes,omitempty"`
}

// Report is the result of Diff.
type Report struct {
	A, B string `json:"-"`
	// LabelA and LabelB name the sides.
	LabelA string `json:"a"`
	LabelB string `json:"b"`
	// EntriesA and EntriesB count the entries read.
	EntriesA int `json:"entriesA"`
	EntriesB int `json:"entriesB"`
	// Differing counts all differing entries, also those past MaxDiffs.
	Differing int        `json:"differing"`
	Files     []FileDiff `json:"files,omitempty"`
	// Causes are the distinct recognised causes, most frequent first.
	Causes []Cause `json:"causes,omitempty"`
	// Notes say which limits truncated the report.
	Notes []string `json:"notes,omitempty"`
}

// Identical reports whether the NARs had no difference.
func (r *Report) Identical() bool { return r.Differing == 0 }

// Summary is the short form of a report that travels in events and
// farm statistics: the top differing files and the recognised causes.
type Summary struct {
	Files     []string    `json:"files,omitempty"`
	Differing int         `json:"differing"`
	Causes    []CauseKind `json:"causes,omitempty"`
	// Error is set when the diff could not be made (or was cut short).
	Error string `json:"error,omitempty"`
}

// String is a one-line form of the summary for logs.
func (s Summary) String() string {
	var b strings.Builder
	if s.Differing == 0 && s.Error == "" {
		return "no difference found"
	}
	fmt.Fprintf(&b, "%d differing", s.Differing)
	if len(s.Files) > 0 {
		fmt.Fprintf(&b, ": %s", strings.Join(s.Files, ", "))
		if s.Differing > len(s.Files) {
			b.WriteString(", …")
		}
	}
	if len(s.Causes) > 0 {
		cs := make([]string, len(s.Causes))
		for i, c := range s.Causes {
			cs[i] = string(c)
		}
		fmt.Fprintf(&b, "; causes: %s", strings.Join(cs, ", "))
	} else {
		b.WriteString("; cause not recognised")
	}
	if s.Error != "" {
		fmt.Fprintf(&b, " (%s)", s.Error)
	}
	return b.String()
}

// Summary returns the top n differing files (a member of an archive is
// named "archive!member") and the recognised causes.
func (r *Report) Summary(n int) Summary {
	s := Summary{Differing: r.Differing}
	for _, f := range r.Files {
		if len(s.Files) >= n {
			break
		}
		s.Files = append(s.Files, leafName(f))
	}
	for _, c := range r.Causes {
		s.Causes = append(s.Causes, c.Kind)
	}
	return s
}

// leafName names the deepest first differing member: "a.tar!x/y".
func leafName(f FileDiff) string {
	name := f.Path
	for len(f.Members) > 0 {
		f = f.Members[0]
		name += "!" + f.Path
	}
	return name
}

// aggregate fills r.Causes from the files, most frequent first.
func (r *Report) aggregate() {
	count := map[CauseKind]int{}
	first := map[CauseKind]Cause{}
	var walk func(fs []FileDiff, prefix string)
	walk = func(fs []FileDiff, prefix string) {
		for _, f := range fs {
			for _, c := range f.Causes {
				if count[c.Kind] == 0 {
					first[c.Kind] = Cause{Kind: c.Kind, Evidence: prefix + f.Path + ": " + c.Evidence}
				}
				count[c.Kind]++
			}
			walk(f.Members, prefix+f.Path+"!")
		}
	}
	walk(r.Files, "")
	kinds := make([]CauseKind, 0, len(count))
	for k := range count {
		kinds = append(kinds, k)
	}
	slices.SortFunc(kinds, func(a, b CauseKind) int {
		if count[a] != count[b] {
			return count[b] - count[a]
		}
		return strings.Compare(string(a), string(b))
	})
	r.Causes = r.Causes[:0]
	for _, k := range kinds {
		r.Causes = append(r.Causes, first[k])
	}
}

// Text renders the report for people.
func (r *Report) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "--- %s (%d entries)\n+++ %s (%d entries)\n", r.LabelA, r.EntriesA, r.LabelB, r.EntriesB)
	if r.Identical() {
		b.WriteString("no differences\n")
	} else {
		fmt.Fprintf(&b, "%d differing entries\n", r.Differing)
	}
	for _, c := range r.Causes {
		fmt.Fprintf(&b, "cause: %s (%s)\n", c.Kind, c.Evidence)
	}
	for _, f := range r.Files {
		writeFile(&b, f, "")
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "note: %s\n", n)
	}
	return b.String()
}

func writeFile(b *strings.Builder, f FileDiff, indent string) {
	fmt.Fprintf(b, "\n%s%s: %s", indent, f.Path, f.Kind)
	if f.Format != "" {
		fmt.Fprintf(b, " (%s)", f.Format)
	}
	b.WriteString("\n")
	side := func(label string, s *Side) {
		if s == nil {
			return
		}
		fmt.Fprintf(b, "%s  %s: %s", indent, label, s.Type)
		if s.Executable {
			b.WriteString(" executable")
		}
		if s.Type == "regular" {
			fmt.Fprintf(b, " %d bytes", s.Size)
		}
		if s.SHA256 != "" {
			fmt.Fprintf(b, " sha256:%s", s.SHA256)
		}
		if s.LinkTarget != "" {
			fmt.Fprintf(b, " -> %s", s.LinkTarget)
		}
		b.WriteString("\n")
	}
	side("a", f.A)
	side("b", f.B)
	for _, c := range f.Causes {
		fmt.Fprintf(b, "%s  cause: %s: %s\n", indent, c.Kind, c.Evidence)
	}
	if len(f.Sections) > 0 {
		fmt.Fprintf(b, "%s  ELF sections differ: %s\n", indent, strings.Join(f.Sections, ", "))
	}
	if f.Offset >= 0 && f.HexA != "" {
		fmt.Fprintf(b, "%s  first difference at offset %d (0x%x)\n", indent, f.Offset, f.Offset)
		fmt.Fprintf(b, "%s  a: %s\n%s  b: %s\n", indent, f.HexA, indent, f.HexB)
	}
	if f.Unified != "" {
		for _, l := range strings.SplitAfter(strings.TrimSuffix(f.Unified, "\n"), "\n") {
			fmt.Fprintf(b, "%s  %s", indent, strings.TrimSuffix(l, "\n"))
			b.WriteString("\n")
		}
	}
	for _, n := range f.Notes {
		fmt.Fprintf(b, "%s  note: %s\n", indent, n)
	}
	for _, m := range f.Members {
		writeFile(b, m, indent+"  ")
	}
}
