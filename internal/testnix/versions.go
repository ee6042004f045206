package testnix

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Suites are the Debian suites whose nix-bin the tests run besides the
// host's, each in a chroot that scripts/nix-chroot.sh builds once:
// trixie ships Nix 2.26, forky 2.34 (Debian 12 itself ships 2.8).
var Suites = []string{"trixie", "forky"}

// JobUser is the unprivileged account runner jobs use; scripts/install-deps.sh
// creates it on the host and the helper inside each chroot.
const JobUser = "provenix-job"

// envBin is where the helper puts the static provenix and the host's busybox
// inside a chroot; on the host, provenix is built into the temp dir and
// busybox is the host's own.
const envBin = "/provenix/bin"

// chrootPATH is PATH for commands run inside a chroot: the helper's binaries
// first, then Debian's.
const chrootPATH = envBin + ":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Env is one Nix installation the tests run against: the host's, or one
// inside a chroot. Commands run through Command see that Nix first on PATH
// and, in a chroot, the chroot's own /nix/store; loopback is shared, so they
// reach NATS and caches the test serves on the host's 127.0.0.1.
type Env struct {
	// Name is "host" or the Debian suite of the chroot.
	Name string
	// Version is what `nix --version` says there, e.g. "2.34.8".
	Version string
	// Root is the chroot's directory on the host; "" for the host.
	Root string
}

// String names the environment with its Nix version, e.g. "forky-2.34.8":
// subtest names, so `-run 'X/forky'` selects one.
func (e *Env) String() string { return e.Name + "-" + e.Version }

// IsHost reports whether the environment is the host itself.
func (e *Env) IsHost() bool { return e.Root == "" }

// HostPath is where path, as seen inside the environment, is on the host.
func (e *Env) HostPath(path string) string {
	if e.IsHost() {
		return path
	}
	return filepath.Join(e.Root, path)
}

// enterRoot makes $1 the root of a private mount namespace and runs the
// rest of its arguments there. A plain chroot(2) would do for most
// commands, but the kernel refuses user namespaces to a chrooted process,
// and Nix's build sandbox needs one; without the sandbox a build into a
// chroot store (nix --store DIR, as the nix package's tests and volunteers
// do) cannot see its inputs at /nix/store. pivot_root gives the process a
// root that is its namespace's own, so the sandbox works. No fork: the
// command keeps this process's PID, so killing it kills the command.
const enterRoot = `set -e
mount --rbind "$1" "$1"
cd "$1"
mkdir -p .oldroot
pivot_root . .oldroot
cd /
umount -l /.oldroot
shift
exec "$@"`

// Command runs name inside the environment. For a chroot, it runs with the
// chroot's directory as its root (in a private mount namespace: see
// enterRoot), PATH is the chroot's, TMPDIR is /tmp, and the rest of the
// test's environment passes through; set cmd.Env after appending to it.
// Loopback is shared with the host.
func (e *Env) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	if e.IsHost() {
		return exec.CommandContext(ctx, name, args...)
	}
	argv := append([]string{"--mount", "--propagation", "private", "sh", "-c", enterRoot, "sh", e.Root, name}, args...)
	cmd := exec.CommandContext(ctx, unshareBin(), argv...)
	cmd.Env = append(chrootEnv(), "PATH="+chrootPATH, "TMPDIR=/tmp")
	return cmd
}

// Output runs name inside the environment and returns its stdout; a failure
// fails the test with stderr.
func (e *Env) Output(t testing.TB, ctx context.Context, name string, args ...string) string {
	t.Helper()
	cmd := e.Command(ctx, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %s %s: %v\n%s%s", e, name, strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

// TempDir is a fresh directory inside the environment, removed when the
// test ends; it returns the path as seen inside (HostPath gives the host's).
// It is world-searchable, so a job user can reach what the test puts there.
func (e *Env) TempDir(t testing.TB) string {
	t.Helper()
	if e.IsHost() {
		dir := t.TempDir()
		for d := dir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	hostDir, err := os.MkdirTemp(filepath.Join(e.Root, "tmp"), "provenix-test-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(hostDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(hostDir) })
	return strings.TrimPrefix(hostDir, e.Root)
}

// Install copies the host's file src into the environment at dst (a path
// inside it), replacing what is there atomically, and returns dst.
func (e *Env) Install(t testing.TB, src, dst string, mode os.FileMode) string {
	t.Helper()
	if err := copyFile(src, e.HostPath(dst), mode); err != nil {
		t.Fatal(err)
	}
	return dst
}

// Busybox is the path, inside the environment, of the host's static
// busybox: the same bytes everywhere, so an expression taking
// `--arg busybox` gives the same store paths under every Nix version.
func (e *Env) Busybox(t testing.TB) string {
	t.Helper()
	bb := Busybox(t)
	if e.IsHost() {
		return bb
	}
	return e.installOnce(t, "busybox", func() (string, error) { return bb, nil })
}

// Provenix is the path, inside the environment, of a static provenix
// (CGO_ENABLED=0) built once per test process from this checkout.
func (e *Env) Provenix(t testing.TB) string {
	t.Helper()
	if e.IsHost() {
		p, err := staticProvenix()
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	return e.installOnce(t, "provenix", staticProvenix)
}

// installOnce copies the file that src returns to envBin/name in the
// chroot, once per process.
func (e *Env) installOnce(t testing.TB, name string, src func() (string, error)) string {
	t.Helper()
	dst := envBin + "/" + name
	key := e.Root + dst
	installedMu.Lock()
	defer installedMu.Unlock()
	if installed[key] {
		return dst
	}
	from, err := src()
	if err != nil {
		t.Fatal(err)
	}
	e.Install(t, from, dst, 0o755)
	installed[key] = true
	return dst
}

var (
	installedMu sync.Mutex
	installed   = map[string]bool{}
)

// Daemon makes the environment's nix-daemon answer, so that JobUser can
// build there: it starts one (stopped when the test ends) unless one
// answers already, and returns the socket's path inside the environment.
func (e *Env) Daemon(t testing.TB) string {
	t.Helper()
	const sock = "/nix/var/nix/daemon-socket/socket"
	if dial(e.HostPath(sock)) {
		return sock
	}
	d := e.Command(context.Background(), "nix-daemon")
	if e.IsHost() {
		path, err := exec.LookPath("nix-daemon")
		if err != nil {
			t.Fatal("nix-daemon is required (apt-get install nix-bin)")
		}
		d = exec.Command(path)
	}
	var log bytes.Buffer
	d.Stdout, d.Stderr = &log, &log
	d.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.Start(); err != nil {
		t.Fatalf("%s: nix-daemon: %v", e, err)
	}
	exited := make(chan struct{})
	go func() { _ = d.Wait(); close(exited) }()
	t.Cleanup(func() {
		// Command execs nix-daemon, so this is the daemon's own PID.
		_ = syscall.Kill(-d.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-d.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	})
	for i := 0; i < 200; i++ {
		if dial(e.HostPath(sock)) {
			return sock
		}
		select {
		case <-exited:
			t.Fatalf("%s: nix-daemon exited: %s", e, log.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("%s: nix-daemon did not open %s: %s", e, sock, log.String())
	return ""
}

func dial(sock string) bool {
	c, err := net.Dial("unix", sock)
	if err == nil {
		c.Close()
	}
	return err == nil
}

// Versions returns the Nix installations to test against: the host's, then
// each suite's chroot. A missing chroot fails the test with the command that
// builds it; it is never skipped. Chroots need root (chroot, mounts), so
// without root the test fails saying so.
//
// Setup is idempotent and shared by concurrent test processes: proc, /dev
// and /dev/pts are mounted into each chroot once and left mounted (another
// package's tests may be using them; scripts/nix-chroot.sh unmounts them
// before it removes a chroot), and JobUser is created inside.
func Versions(t testing.TB) []*Env {
	t.Helper()
	Busybox(t)
	host := &Env{Name: "host"}
	v, err := exec.Command("nix", "--version").Output()
	if err != nil {
		t.Fatalf("nix --version: %v (apt-get install nix-bin)", err)
	}
	host.Version = lastField(string(v))
	envs := []*Env{host}
	if runtime.GOOS != "linux" {
		t.Fatalf("the Nix version chroots need Linux; this is %s", runtime.GOOS)
	}
	if os.Geteuid() != 0 {
		t.Fatal("testing the other Nix versions runs them in chroots, which needs root (CI runs as root); run the tests as root")
	}
	for _, s := range Suites {
		e, err := openChroot(s)
		if err != nil {
			t.Fatal(err)
		}
		envs = append(envs, e)
	}
	return envs
}

// ToolsDir is where scripts/ cache test tools (PROVENIX_TOOLS_DIR).
func ToolsDir() string {
	if d := os.Getenv("PROVENIX_TOOLS_DIR"); d != "" {
		return d
	}
	return "/var/cache/provenix-tools"
}

// stampFile is written last by scripts/nix-chroot.sh: a chroot without it
// is incomplete.
const stampFile = "etc/provenix-chroot"

var (
	openMu sync.Mutex
	opened = map[string]*Env{}
)

func openChroot(suite string) (*Env, error) {
	openMu.Lock()
	defer openMu.Unlock()
	if e, ok := opened[suite]; ok {
		return e, nil
	}
	root := filepath.Join(ToolsDir(), "nix-chroot-"+suite)
	if _, err := os.Stat(filepath.Join(root, stampFile)); err != nil {
		return nil, fmt.Errorf("no Nix chroot for Debian %s at %s (%v): build it with `scripts/nix-chroot.sh build %s` as root (make deps does)", suite, root, err, suite)
	}
	// The chroot's "/" must let every user in (the runner's job user).
	if err := os.Chmod(root, 0o755); err != nil {
		return nil, fmt.Errorf("%s chroot: %w", suite, err)
	}
	for _, m := range []struct{ src, dst, fstype string }{
		{"proc", "proc", "proc"},
		{"/dev", "dev", ""},
		{"/dev/pts", "dev/pts", ""},
	} {
		if err := mountOnce(m.src, filepath.Join(root, m.dst), m.fstype); err != nil {
			return nil, fmt.Errorf("%s chroot: %w", suite, err)
		}
	}
	e := &Env{Name: suite, Root: root}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := e.Command(ctx, "nix", "--version").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s chroot: nix --version: %v: %s (rebuild it: rm %s and run scripts/nix-chroot.sh build %s)", suite, err, out, filepath.Join(root, stampFile), suite)
	}
	e.Version = lastField(string(out))
	// The job user, in nix-users as on the host (the chroot's daemon allows
	// every user, but the runner's tests expect the same account).
	script := `getent group nix-users >/dev/null || groupadd --system nix-users
id ` + JobUser + ` >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /nonexistent --shell /bin/false --groups nix-users ` + JobUser
	if out, err := e.Command(ctx, "sh", "-c", script).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("%s chroot: creating %s: %v: %s", suite, JobUser, err, out)
	}
	opened[suite] = e
	return e, nil
}

func isMountPoint(dir string) (bool, error) {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return false, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if fs := strings.Fields(s.Text()); len(fs) > 1 && fs[1] == dir {
			return true, nil
		}
	}
	return false, s.Err()
}

func lastField(s string) string {
	f := strings.Fields(s)
	if len(f) == 0 {
		return ""
	}
	return f[len(f)-1]
}

func unshareBin() string {
	if p, err := exec.LookPath("unshare"); err == nil {
		return p
	}
	return "/usr/bin/unshare"
}

// chrootEnv is the test's environment without what names host paths.
func chrootEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "PATH", "TMPDIR", "NIX_REMOTE", "GOCOVERDIR":
			continue
		}
		env = append(env, kv)
	}
	return env
}

var (
	provenixOnce sync.Once
	provenixPath string
	provenixErr  error
)

// staticProvenix builds cmd/provenix with CGO_ENABLED=0, once per process,
// into a fixed place in the host's temp dir (replaced atomically, so
// concurrent test processes do not see half a binary).
func staticProvenix() (string, error) {
	provenixOnce.Do(func() {
		provenixPath, provenixErr = goBuild("provenix", "build", "./cmd/provenix")
	})
	return provenixPath, provenixErr
}

// GoBuild compiles, with CGO_ENABLED=0, what goArgs name (e.g. "build",
// "./cmd/provenix" or "test", "-c", "./nix") from this module into a fixed
// file named name in the host's temp dir, and returns its path. Static
// binaries run in every chroot.
func GoBuild(t testing.TB, name string, goArgs ...string) string {
	t.Helper()
	p, err := goBuild(name, goArgs...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func goBuild(name string, goArgs ...string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("provenix-testnix-%d", os.Getuid()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(dir, "."+name+"-")
	if err != nil {
		return "", err
	}
	tmp.Close()
	args := append([]string{goArgs[0], "-o", tmp.Name()}, goArgs[1:]...)
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(tmp.Name())
		return "", fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	// CreateTemp made it 0600; job users run it too.
	if err := os.Chmod(tmp.Name(), 0o755); err != nil {
		return "", err
	}
	dst := filepath.Join(dir, name)
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return "", err
	}
	return dst, nil
}

// moduleRoot is the directory of this module's go.mod, found from the
// test's working directory (its package directory).
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory")
		}
		dir = parent
	}
}

// ModuleRoot is the directory of this module's go.mod.
func ModuleRoot(t testing.TB) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// copyFile copies src to dst through a temp file and a rename.
func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+"-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, in); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dst)
}

// CopyTree copies the host directory src into the environment at dst.
func (e *Env) CopyTree(t testing.TB, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(e.HostPath(dst), rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		return copyFile(p, target, fi.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
}
