package capture

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Several runners of one host share its Nix daemon (and may share its
// job users), and a store path's registration time is all that ties a
// build to a job: a job of one runner building while a job of another
// runs would have its build taken for the other's. So the windows of
// every runner of the host are recorded as files in one directory,
// root's only (HostWindows), and each runner counts the others' when it
// asks whether a path is a job's alone.
//
// A file holds the window's start and, once it ended, its end (Unix
// nanoseconds, a line each); its runner holds an flock on it while the
// job runs. A file without an end is a running window, or that of a
// runner that died: it counts as running until it is older than keep
// and no runner holds it, and is then removed.

// NewHostWindows is NewWindows whose windows are shared, through dir,
// with every runner of the host that uses the same dir. dir must exist
// and be reachable by root only (jobs must not write windows).
func NewHostWindows(keep time.Duration, dir string) (*Windows, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("capture: job windows: %w", err)
	}
	if !fi.IsDir() || fi.Mode().Perm()&0o077 != 0 || !ownedByMe(fi) {
		return nil, fmt.Errorf("capture: job windows: %s is not a directory of this user's only", dir)
	}
	w := NewWindows(keep)
	w.dir, w.files = dir, map[int]*os.File{}
	w.self = fmt.Sprintf("win-%d-%s-", os.Getpid(), rand.Text()[:8])
	return w, nil
}

// windowFile is the name of window id's file: the prefix is w's own.
func (w *Windows) windowFile(id int) string { return w.self + strconv.Itoa(id) }

// shareBegin records window id, started at start, in w.dir; w.mu is
// held. A window it cannot record is not shared, and is nobody's alone.
func (w *Windows) shareBegin(id int, start time.Time) {
	f, err := os.OpenFile(filepath.Join(w.dir, w.windowFile(id)), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err == nil {
		if err = lockFile(f, true); err == nil {
			_, err = fmt.Fprintf(f, "%d\n", start.UnixNano())
		}
		if err != nil {
			f.Close()
		}
	}
	if err != nil {
		w.unshared[id] = true
		return
	}
	w.files[id] = f
}

// shareEnd records window id's end, lets its file go, and removes the
// files of windows over long enough ago; w.mu is held.
func (w *Windows) shareEnd(id int, end time.Time) {
	if f, ok := w.files[id]; ok {
		fmt.Fprintf(f, "%d\n", end.UnixNano())
		f.Close() // drops the flock
		delete(w.files, id)
	}
	ents, err := os.ReadDir(w.dir)
	if err != nil {
		return
	}
	type file struct {
		path string
		win  *window
	}
	var files []file
	var running []*window
	for _, e := range ents {
		p := filepath.Join(w.dir, e.Name())
		win, ok := readWindow(p)
		if !ok {
			continue
		}
		if win.end.IsZero() && !heldByAnother(p) && !strings.HasPrefix(e.Name(), w.self) {
			// Its runner died in the job: it ends now, and ages from
			// here (appending is safe: nobody holds it).
			if f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0); err == nil {
				fmt.Fprintf(f, "%d\n", end.UnixNano())
				f.Close()
				win.end = end
			}
		}
		if win.end.IsZero() {
			running = append(running, win)
		}
		files = append(files, file{p, win})
	}
	for _, win := range w.wins {
		if win.end.IsZero() {
			running = append(running, win)
		}
	}
	for _, f := range files {
		if !f.win.end.IsZero() && w.over(f.win, end, running) {
			os.Remove(f.path)
		}
	}
}

// others are the windows the host's other runners recorded (a running
// one with a zero end); ok false when the directory cannot be read.
func (w *Windows) others() (wins []*window, ok bool) {
	ents, err := os.ReadDir(w.dir)
	if err != nil {
		return nil, false
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), w.self) {
			continue
		}
		if win, ok := readWindow(filepath.Join(w.dir, e.Name())); ok {
			wins = append(wins, win)
		}
	}
	return wins, true
}

// readWindow reads a window file; ok false for one being written (no
// complete start line yet: it has no build of its own yet either).
func readWindow(p string) (*window, bool) {
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, false
	}
	lines := strings.Split(string(b), "\n")
	start, err := strconv.ParseInt(lines[0], 10, 64)
	if err != nil || len(lines) < 2 {
		return nil, false
	}
	win := &window{start: time.Unix(0, start).Truncate(time.Second)}
	if len(lines) >= 3 {
		if end, err := strconv.ParseInt(lines[1], 10, 64); err == nil {
			win.end = time.Unix(0, end)
		}
	}
	return win, true
}
