package nardiff

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io"
)

// elf names the sections whose contents differ. debug/elf reads through
// an io.ReaderAt over the bounded in-memory copy, so a hostile header can
// point nowhere outside it.
func (d *differ) elf(fd *FileDiff, a, b []byte) {
	ea, errA := elf.NewFile(bytes.NewReader(a))
	eb, errB := elf.NewFile(bytes.NewReader(b))
	if errA != nil || errB != nil {
		fd.Notes = append(fd.Notes, fmt.Sprintf("unreadable ELF: %v %v", errA, errB))
		return
	}
	defer ea.Close()
	defer eb.Close()
	byName := map[string]*elf.Section{}
	for _, s := range eb.Sections {
		byName[s.Name] = s
	}
	seen := map[string]bool{}
	for _, s := range ea.Sections {
		if s.Name == "" {
			continue
		}
		seen[s.Name] = true
		t, ok := byName[s.Name]
		if !ok {
			fd.Sections = append(fd.Sections, s.Name+" (only in a)")
			continue
		}
		if same, da, db := d.sameSection(s, t); !same {
			fd.Sections = append(fd.Sections, s.Name)
			if !buildID[s.Name] {
				// The cause shows in the section's own bytes; build ids
				// are hashes of the rest, a consequence.
				i := firstDiff(da, db)
				lo := max(0, i-64)
				fd.Causes = mergeCauses(fd.Causes, causesIn(da[lo:min(len(da), i+64)], db[lo:min(len(db), i+64)], d.o, false))
			}
		}
	}
	for _, t := range eb.Sections {
		if t.Name != "" && !seen[t.Name] {
			fd.Sections = append(fd.Sections, t.Name+" (only in b)")
		}
	}
	if len(fd.Sections) == 0 {
		fd.Notes = append(fd.Notes, "all sections are equal: ELF or program headers differ")
	}
}

// buildID are the sections that hash the rest of the file.
var buildID = map[string]bool{".note.gnu.build-id": true, ".note.go.buildid": true}

// sameSection compares two sections; their data (bounded) comes back when
// it was read.
func (d *differ) sameSection(s, t *elf.Section) (bool, []byte, []byte) {
	if s.Type == elf.SHT_NOBITS || t.Type == elf.SHT_NOBITS {
		return s.Type == t.Type && s.Size == t.Size, nil, nil
	}
	da, errA := io.ReadAll(io.LimitReader(s.Open(), d.lim.MaxBuffer))
	db, errB := io.ReadAll(io.LimitReader(t.Open(), d.lim.MaxBuffer))
	same := errA == nil && errB == nil && bytes.Equal(da, db) && s.Type == t.Type && s.Flags == t.Flags
	return same, da, db
}
