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
		if !d.sameSection(s, t) {
			fd.Sections = append(fd.Sections, s.Name)
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

func (d *differ) sameSection(s, t *elf.Section) bool {
	if s.Type != t.Type || s.Size != t.Size || s.Flags != t.Flags {
		return false
	}
	if s.Type == elf.SHT_NOBITS {
		return true
	}
	da, errA := io.ReadAll(io.LimitReader(s.Open(), d.lim.MaxBuffer))
	db, errB := io.ReadAll(io.LimitReader(t.Open(), d.lim.MaxBuffer))
	return errA == nil && errB == nil && bytes.Equal(da, db)
}
