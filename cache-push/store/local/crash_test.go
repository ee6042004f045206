package local

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"codeberg.org/provenix/provenix/cache-push/store"
)

// crashChildEnv makes TestGroupCommitKilled the writer process: it names
// the store directory the child writes.
const crashChildEnv = "PROVENIX_LOCAL_CRASH_CHILD_DIR"

// crashContent is the content of key: its name repeated to 8 KiB, so a
// torn or mixed-up file shows.
func crashContent(key string) []byte {
	return bytes.Repeat([]byte(key+"\n"), 8<<10/(len(key)+1))
}

// TestGroupCommitKilled kills (SIGKILL) a process while 16 writers commit
// entries as groups (NAR and sidecar, then narinfo) through the group
// committer, and checks what it left: every file whole, and no narinfo
// without its NAR and sidecar. A kill cannot lose what the page cache
// holds, so this checks the order of the renames and that nothing torn
// is ever visible; durability across power loss rests on the fsyncs
// before each stage's renames.
func TestGroupCommitKilled(t *testing.T) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		crashChild(t, dir)
		return
	}
	dir := filepath.Join(t.TempDir(), "cache")
	// Several kills on the same directory, each at another moment of
	// the writers' commits: the window between a stage's renames and the
	// next stage's is short.
	committed := 0
	for round := range 8 {
		committed += killWriter(t, dir, 100+round*37)
	}
	s, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	var narinfos, files int
	err = s.List(t.Context(), "", func(fi store.Info) error {
		files++
		b, err := store.ReadAll(t.Context(), s, fi.Key, 1<<20)
		if err != nil {
			return err
		}
		if !bytes.Equal(b, crashContent(fi.Key)) {
			t.Errorf("%s: %d bytes, not what was written (torn)", fi.Key, len(b))
		}
		name, ok := strings.CutSuffix(fi.Key, ".narinfo")
		if !ok {
			return nil
		}
		narinfos++
		for _, dep := range []string{"nar/" + name + ".nar.zst", name + ".provenance.json"} {
			if _, err := s.Stat(t.Context(), dep); err != nil {
				t.Errorf("%s visible without %s: %v", fi.Key, dep, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if narinfos < committed {
		t.Errorf("%d narinfos after the kill, fewer than the %d entries the writer reported committed", narinfos, committed)
	}
	t.Logf("8 kills after %d reported entries in all: %d files, %d narinfos", committed, files, narinfos)
}

// killWriter starts a writer on dir, kills it once it has reported n
// committed entries, and returns how many it reported.
func killWriter(t *testing.T, dir string, n int) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	child := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestGroupCommitKilled$", "-test.count=1")
	child.Env = append(os.Environ(), crashChildEnv+"="+dir)
	stdout, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var childErr strings.Builder
	child.Stderr = &childErr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	committed := 0
	for committed < n && sc.Scan() {
		committed++
	}
	if committed < n {
		child.Wait()
		t.Fatalf("writer stopped after %d entries: %s", committed, childErr.String())
	}
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	child.Wait()
	return committed
}

// crashChild commits entries until it is killed, printing a line per
// entry committed.
func crashChild(t *testing.T, dir string) {
	s, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var out sync.Mutex
	var wg sync.WaitGroup
	run := time.Now().UnixNano() // names differ from the killed runs'
	for w := range 16 {
		wg.Go(func() {
			for i := 0; ; i++ {
				name := fmt.Sprintf("r%dw%02di%06d", run, w, i)
				var objs []store.Object
				for _, key := range []string{"nar/" + name + ".nar.zst", name + ".provenance.json", name + ".narinfo"} {
					o, err := store.Write(ctx, s, key, bytes.NewReader(crashContent(key)))
					if err != nil {
						t.Error(err)
						return
					}
					objs = append(objs, o)
				}
				if err := s.CommitGroup(ctx, objs[:2], objs[2:]); err != nil {
					t.Error(err)
					return
				}
				out.Lock()
				fmt.Println(name)
				out.Unlock()
			}
		})
	}
	wg.Wait()
}
