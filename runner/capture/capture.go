// Package capture is how the runner learns which derivations a job
// realised, so that the runner — never a job step — attests them.
//
// Two ways, both ending in the runner's Attest function:
//   - a step asks: `provenix build` inside a job realises its targets as
//     the job user, then sends the .drv paths to the runner over a per-job
//     Unix socket with a per-job token (Server, Client). The runner checks
//     the outputs in its own store and signs; the step sees only results.
//   - automatically: after the job, the runner lists the paths its store
//     built (not substituted) while the job ran (nix.BuiltSince) and
//     attests their derivations. With several jobs at once (capacity > 1)
//     a path registered while another job also ran cannot be attributed
//     from the store alone; Windows says so and such paths are left to
//     the explicit way.
package capture

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path"
	"strings"
	"sync"
	"time"
)

// Environment variables a job step finds the runner's socket in.
const (
	EnvSocket = "PROVENIX_RUNNER_SOCKET"
	EnvToken  = "PROVENIX_RUNNER_TOKEN"
)

// MaxDrvs bounds one request.
const MaxDrvs = 1000

var (
	// ErrUnauthorized is a request without this job's token.
	ErrUnauthorized = errors.New("capture: wrong or missing job token")
	// ErrBadRequest is a malformed request or a path that is not a .drv.
	ErrBadRequest = errors.New("capture: bad request")
	// ErrPeer is a connection from a process that is not the job's: another
	// uid, or outside the job's cgroup. A token alone is not enough.
	ErrPeer = errors.New("capture: the connecting process is not this job's")
)

// Peer is the process at the other end of the socket, as the kernel
// reports it when it connected (SO_PEERCRED, LOCAL_PEERCRED).
type Peer struct {
	UID int
	PID int // 0 when the system does not say
}

// PeerCheck decides whether a peer may use a job's socket.
type PeerCheck func(Peer) error

// Output is one attested output, as the step is told.
type Output struct {
	Name      string `json:"name"`
	Path      string `json:"path"`
	NarSHA256 string `json:"narSha256"`
	NarSize   uint64 `json:"narSize"`
}

// Result is one attested derivation.
type Result struct {
	DrvPath   string   `json:"drvPath"`
	System    string   `json:"system"`
	Outputs   []Output `json:"outputs"`
	MsgID     string   `json:"msgId"`
	Duplicate bool     `json:"duplicate"`
	BuilderID string   `json:"builderId"`
}

// AttestFunc attests realised derivations for the job. It must check the
// derivations' outputs itself; the request is the job's word only.
type AttestFunc func(ctx context.Context, drvs []string) ([]Result, error)

type request struct {
	Drvs []string `json:"drvs"`
}

type response struct {
	Results []Result `json:"results,omitempty"`
	Error   string   `json:"error,omitempty"`
}

// NewToken makes a per-job token.
func NewToken() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// Server answers one job's attestation requests on a Unix socket.
type Server struct {
	attest AttestFunc
	check  PeerCheck
	path   string
	ln     net.Listener
	srv    *http.Server
	done   chan struct{}

	mu    sync.Mutex
	token string // "" once closed: nothing is accepted any more
}

// Listen creates the socket at sockPath (its directory must exist and be
// reachable only by the job user and the runner) and serves until Close.
// uid/gid, when ≥ 0, own the socket so the job user can connect.
func Listen(sockPath, token string, uid, gid int, attest AttestFunc) (*Server, error) {
	return ListenBound(sockPath, token, uid, gid, nil, attest)
}

// ListenBound is Listen for a socket bound to one job: every connection's
// peer, as the kernel reports it, must pass check before the token is
// even looked at, so a token copied out of the job is worth nothing to a
// process of another uid or outside the job.
func ListenBound(sockPath, token string, uid, gid int, check PeerCheck, attest AttestFunc) (*Server, error) {
	if token == "" {
		return nil, errors.New("capture socket: empty token")
	}
	_ = os.Remove(sockPath)
	ln, err := net.Listen("unix", sockPath)
	if err != nil {
		return nil, fmt.Errorf("capture socket: %w", err)
	}
	if err := os.Chmod(sockPath, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("capture socket: %w", err)
	}
	if uid >= 0 {
		if err := os.Chown(sockPath, uid, gid); err != nil {
			ln.Close()
			return nil, fmt.Errorf("capture socket: %w", err)
		}
	}
	s := &Server{token: token, attest: attest, check: check, path: sockPath, ln: ln, done: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/attest", s.handle)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			p, err := peerOf(c)
			return context.WithValue(ctx, peerKey{}, peerResult{p, err})
		}}
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(ln)
	}()
	return s, nil
}

// Close stops serving and removes the socket: the job's credential is
// worthless from then on. A request in progress is cut off.
func (s *Server) Close() error {
	s.mu.Lock()
	s.token = ""
	s.mu.Unlock()
	err := s.srv.Close()
	<-s.done
	if rerr := os.Remove(s.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) && err == nil {
		err = rerr
	}
	return err
}

type peerKey struct{}

type peerResult struct {
	peer Peer
	err  error
}

func (s *Server) handle(w http.ResponseWriter, r *http.Request) {
	reply := func(code int, resp response) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(resp)
	}
	if s.check != nil {
		pr, _ := r.Context().Value(peerKey{}).(peerResult)
		err := pr.err
		if err == nil {
			err = s.check(pr.peer)
		}
		if err != nil {
			reply(http.StatusForbidden, response{Error: fmt.Sprintf("%v: %v", ErrPeer, err)})
			return
		}
	}
	s.mu.Lock()
	token := s.token
	s.mu.Unlock()
	got := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
	if token == "" || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
		reply(http.StatusUnauthorized, response{Error: ErrUnauthorized.Error()})
		return
	}
	var req request
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		reply(http.StatusBadRequest, response{Error: fmt.Sprintf("%v: %v", ErrBadRequest, err)})
		return
	}
	if err := ValidDrvs(req.Drvs); err != nil {
		reply(http.StatusBadRequest, response{Error: err.Error()})
		return
	}
	res, err := s.attest(r.Context(), req.Drvs)
	if err != nil {
		reply(http.StatusUnprocessableEntity, response{Results: res, Error: err.Error()})
		return
	}
	reply(http.StatusOK, response{Results: res})
}

// ValidDrvs checks the shape of derivation paths a job sent: absolute,
// clean, directly in a store directory, ending in .drv.
func ValidDrvs(drvs []string) error {
	if len(drvs) == 0 || len(drvs) > MaxDrvs {
		return fmt.Errorf("%w: want 1..%d derivations, got %d", ErrBadRequest, MaxDrvs, len(drvs))
	}
	for _, d := range drvs {
		if !path.IsAbs(d) || path.Clean(d) != d || !strings.HasSuffix(d, ".drv") || strings.ContainsAny(d, "\x00\n") {
			return fmt.Errorf("%w: %q is not a store derivation path", ErrBadRequest, d)
		}
	}
	return nil
}

// Client is a job step's side of the socket.
type Client struct {
	Socket, Token string
}

// FromEnv returns the client for the job this process runs in, or nil
// outside a Provenix runner job.
func FromEnv() *Client {
	s, t := os.Getenv(EnvSocket), os.Getenv(EnvToken)
	if s == "" || t == "" {
		return nil
	}
	return &Client{Socket: s, Token: t}
}

// Attest asks the runner to attest drvs, which this job has realised.
func (c *Client) Attest(ctx context.Context, drvs []string) ([]Result, error) {
	body, err := json.Marshal(request{Drvs: drvs})
	if err != nil {
		return nil, err
	}
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", c.Socket)
		},
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://runner/v1/attest", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("runner socket %s: %w", c.Socket, err)
	}
	defer resp.Body.Close()
	var out response
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&out); err != nil {
		return nil, fmt.Errorf("runner answered %s: %w", resp.Status, err)
	}
	if resp.StatusCode != http.StatusOK {
		if resp.StatusCode == http.StatusUnauthorized {
			return out.Results, fmt.Errorf("%w: %s", ErrUnauthorized, out.Error)
		}
		if resp.StatusCode == http.StatusForbidden {
			return out.Results, fmt.Errorf("%w: %s", ErrPeer, out.Error)
		}
		return out.Results, fmt.Errorf("runner refused: %s", out.Error)
	}
	return out.Results, nil
}

// Windows tracks when jobs ran, to tell whether a store path registered
// at some second can only belong to one job.
type Windows struct {
	mu   sync.Mutex
	next int
	wins map[int]*window
	keep time.Duration
	// dir shares the windows with the host's other runners
	// (NewHostWindows): files holds this process's running ones,
	// unshared those it could not record (nobody's alone).
	dir      string
	self     string // the prefix of this Windows' files
	files    map[int]*os.File
	unshared map[int]bool
}

type window struct {
	start, end time.Time // end zero while running
}

// NewWindows keeps finished windows for keep (they matter only until every
// job that overlapped them has been captured).
func NewWindows(keep time.Duration) *Windows {
	return &Windows{wins: map[int]*window{}, keep: keep, unshared: map[int]bool{}}
}

// Begin records a job starting now and returns its handle.
func (w *Windows) Begin(now time.Time) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.next++
	w.wins[w.next] = &window{start: now.Truncate(time.Second)}
	if w.dir != "" {
		w.shareBegin(w.next, now)
	}
	return w.next
}

// End records the job's end.
func (w *Windows) End(id int, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if win, ok := w.wins[id]; ok {
		win.end = now
	}
	if w.dir != "" {
		w.shareEnd(id, now)
	}
	var running []*window
	for _, win := range w.wins {
		if win.end.IsZero() {
			running = append(running, win)
		}
	}
	for k, win := range w.wins {
		if !win.end.IsZero() && w.over(win, now, running) {
			delete(w.wins, k)
			delete(w.unshared, k)
		}
	}
}

// over reports whether win, ended, can be forgotten at now: it ended
// more than keep ago, and no window still running began before it ended
// (that job's capture, at its end, asks about every path since its
// start, however long it runs).
func (w *Windows) over(win *window, now time.Time, running []*window) bool {
	if now.Sub(win.end) <= w.keep {
		return false
	}
	for _, r := range running {
		if !r.start.After(win.end) {
			return false
		}
	}
	return true
}

// Exclusive reports whether a path registered at t (whole seconds) falls
// in job id's window and in no other job's: of this runner, or, with
// NewHostWindows, of the host's other runners.
func (w *Windows) Exclusive(id int, t time.Time) bool { return w.ExclusiveOf(id)(t) }

// ExclusiveOf is Exclusive for job id's paths, for one capture: the host's
// other runners' windows are read once, not for each path.
func (w *Windows) ExclusiveOf(id int) func(t time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.unshared[id] {
		return func(time.Time) bool { return false }
	}
	me, ok := w.wins[id]
	if !ok {
		return func(time.Time) bool { return false }
	}
	var others []window
	for k, win := range w.wins {
		if k != id {
			others = append(others, *win)
		}
	}
	if w.dir != "" {
		shared, ok := w.others()
		if !ok {
			return func(time.Time) bool { return false }
		}
		for _, win := range shared {
			others = append(others, *win)
		}
	}
	mine := *me
	return func(t time.Time) bool {
		in := func(win window) bool {
			end := win.end
			if end.IsZero() {
				end = time.Now()
			}
			// A registration second overlaps the window if any instant
			// of it does.
			return !t.Add(time.Second).Before(win.start) && !t.After(end)
		}
		if !in(mine) {
			return false
		}
		for _, win := range others {
			if in(win) {
				return false
			}
		}
		return true
	}
}
