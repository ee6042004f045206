// Package testgitea runs a real Gitea 1.26.4 for integration tests of the
// Actions runner. Gitea speaks the same runner connect-RPC protocol as
// Forgejo (code.gitea.io/actions-proto-go), so a runner that works against
// it works against both.
//
// The package only executes a prebuilt binary; it never imports Gitea. Build
// it once with `scripts/gitea.sh build` (scripts/install-deps.sh test does
// this). The binary is looked up in $PROVENIX_GITEA, else in
// ${PROVENIX_TOOLS_DIR:-/var/cache/provenix-tools}/gitea-1.26.4/gitea, and
// its directory must also hold Gitea's options/ and templates/ (the module
// has no bindata, so the binary reads them from disk via STATIC_ROOT_PATH).
// A missing binary fails the test with the command to run; it never skips.
//
// What the forge looks like:
//   - Start serves http://127.0.0.1:<free port> with sqlite in t.TempDir(),
//     one site admin (Forge.AdminUser) and an API token with all scopes.
//   - Runners connect to Forge.RunnerURL() (<URL>/api/actions), with
//     x-runner-uuid / x-runner-token headers after Register.
//   - Workflows are read from .forgejo/workflows, .gitea/workflows and
//     .github/workflows: stock Gitea reads only the last two, so Start adds
//     .forgejo/workflows to [actions] WORKFLOW_DIRS and the same workflow
//     file works on Forgejo and on this forge.
//   - Queues are "immediate" (as in Gitea's own integration tests): a push
//     creates its run and jobs before the API call returns, so a runner's
//     next FetchTask already sees the job. Gitea has no server-side poll
//     interval; how fast a task is picked up is the runner's poll interval.
//   - API endpoints used (all under /api/v1, through the SDK):
//     POST /admin/actions/runners/registration-token,
//     PUT /repos/{o}/{r}/actions/secrets/{name},
//     GET /repos/{o}/{r}/actions/runs (newest first),
//     GET /repos/{o}/{r}/actions/runs/{run}/jobs,
//     GET /repos/{o}/{r}/actions/jobs/{job_id}/logs,
//     POST/PUT /repos/{o}/{r}/contents/{path},
//     GET /repos/{o}/{r}/branches/{branch}, POST /repos/{o}/{r}/releases,
//     POST /repos/{o}/{r}/tags.
package testgitea

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"code.gitea.io/sdk/gitea"

	"codeberg.org/provenix/provenix/internal/testproc"
)

// Version is the Gitea release scripts/gitea.sh builds.
const Version = "1.26.4"

// BuildCommand is what a developer runs, from the repository root, when the
// binary is missing.
const BuildCommand = "scripts/gitea.sh build"

const startTimeout = 60 * time.Second

// Forge is one running Gitea. Its fields are read-only.
type Forge struct {
	URL           string // http://127.0.0.1:<port>, no trailing slash
	AdminUser     string
	AdminPassword string
	Token         string // API token of AdminUser with scope "all"

	bin     string
	workDir string
	conf    string
	logPath string
	client  *gitea.Client
}

// BinaryPath is where Start looks for the Gitea binary.
func BinaryPath() string {
	return testproc.Binary("PROVENIX_GITEA", "gitea-"+Version, "gitea")
}

// Start runs a fresh Gitea for the test and stops it in t.Cleanup, dumping
// the tail of its log when the test failed.
func Start(t testing.TB) *Forge {
	t.Helper()
	bin := BinaryPath()
	assets := filepath.Dir(bin)
	testproc.Require(t, "testgitea", bin, BuildCommand, "PROVENIX_GITEA")
	if _, err := os.Stat(filepath.Join(assets, "options")); err != nil {
		t.Fatalf("testgitea: Gitea assets missing next to %s (%v); rebuild with `%s`", bin, err, BuildCommand)
	}

	work := t.TempDir()
	f := &Forge{
		AdminUser:     "provenix",
		AdminPassword: "provenix-" + randomHex(t, 8),
		bin:           bin,
		workDir:       work,
		conf:          filepath.Join(work, "app.ini"),
		logPath:       filepath.Join(work, "gitea.log"),
	}
	port := testproc.FreePort(t)
	f.URL = fmt.Sprintf("http://127.0.0.1:%d", port)
	if err := os.WriteFile(f.conf, []byte(f.config(t, assets, port)), 0o600); err != nil {
		t.Fatalf("testgitea: write app.ini: %v", err)
	}

	// The schema and the admin exist before the server starts, so the CLI
	// and the server never write the sqlite file at the same time.
	f.gitea(t, "migrate")
	out := f.gitea(t, "admin", "user", "create",
		"--username", f.AdminUser, "--password", f.AdminPassword,
		"--email", f.AdminUser+"@example.invalid", "--admin",
		"--must-change-password=false",
		"--access-token", "--access-token-name", "testgitea", "--access-token-scopes", "all")
	f.Token = parseToken(out)
	if f.Token == "" {
		t.Fatalf("testgitea: no access token in `gitea admin user create` output:\n%s", out)
	}

	f.serve(t)
	client, err := gitea.NewClient(f.URL, gitea.SetToken(f.Token))
	if err != nil {
		t.Fatalf("testgitea: API client: %v", err)
	}
	f.client = client
	return f
}

// Client is an SDK client authenticated as the admin.
func (f *Forge) Client() *gitea.Client { return f.client }

// RunnerURL is the base URL of the runner connect-RPC service.
func (f *Forge) RunnerURL() string { return f.URL + "/api/actions" }

// config renders app.ini. Everything that would reach the network or write
// outside work is switched off; secrets are fixed up front because Gitea
// otherwise generates and saves them on first load, racing the CLI.
func (f *Forge) config(t testing.TB, assets string, port int) string {
	jwt := make([]byte, 32)
	if _, err := rand.Read(jwt); err != nil {
		t.Fatalf("testgitea: random: %v", err)
	}
	runAsRoot := ""
	if os.Getuid() == 0 {
		// Gitea refuses to run as root unless told; CI containers are root.
		runAsRoot = "I_AM_BEING_UNSAFE_RUNNING_AS_ROOT = true\n"
	}
	w := f.workDir
	return fmt.Sprintf(`APP_NAME = provenix testgitea
RUN_MODE = prod
WORK_PATH = %[1]s
%[2]s
[server]
PROTOCOL = http
HTTP_ADDR = 127.0.0.1
HTTP_PORT = %[3]d
ROOT_URL = http://127.0.0.1:%[3]d/
LOCAL_ROOT_URL = http://127.0.0.1:%[3]d/
APP_DATA_PATH = %[1]s/data
STATIC_ROOT_PATH = %[4]s
DISABLE_SSH = true
START_SSH_SERVER = false
LFS_START_SERVER = false
OFFLINE_MODE = true

[database]
DB_TYPE = sqlite3
PATH = %[1]s/gitea.db
SQLITE_JOURNAL_MODE = WAL

[repository]
ROOT = %[1]s/repos
DEFAULT_BRANCH = main

[security]
INSTALL_LOCK = true
SECRET_KEY = %[5]s
INTERNAL_TOKEN = %[6]s
PASSWORD_COMPLEXITY = off
MIN_PASSWORD_LENGTH = 8

[oauth2]
JWT_SECRET = %[7]s

[service]
DISABLE_REGISTRATION = true
REQUIRE_SIGNIN_VIEW = false
ENABLE_NOTIFY_MAIL = false

[mailer]
ENABLED = false

[session]
PROVIDER = memory

[cache]
ADAPTER = memory

[queue]
TYPE = immediate

[indexer]
ISSUE_INDEXER_TYPE = db
REPO_INDEXER_ENABLED = false

[cron.update_checker]
ENABLED = false

[migrations]
ALLOW_LOCALNETWORKS = true

[webhook]
ALLOWED_HOST_LIST = loopback

[actions]
ENABLED = true
DEFAULT_ACTIONS_URL = self
WORKFLOW_DIRS = .forgejo/workflows,.gitea/workflows,.github/workflows

[log]
MODE = console
LEVEL = Info
ENABLE_SSH_LOG = false
logger.access.MODE =
logger.router.MODE =
`, w, runAsRoot, port, assets,
		randomHex(t, 16), randomHex(t, 32), base64.RawURLEncoding.EncodeToString(jwt))
}

// gitea runs one CLI command against this forge's config and returns its
// combined output, failing the test with that output on error.
func (f *Forge) gitea(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, f.bin, append([]string{"--config", f.conf, "--work-path", f.workDir}, args...)...)
	cmd.Env = f.env()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("testgitea: gitea %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (f *Forge) env() []string {
	// GITEA_WORK_DIR reaches the git hooks Gitea installs into repositories,
	// which call back into the same binary on every push.
	return append(os.Environ(), "GITEA_WORK_DIR="+f.workDir, "GITEA_CUSTOM="+filepath.Join(f.workDir, "custom"))
}

// serve starts `gitea web`, registers its shutdown and waits until the API
// answers.
func (f *Forge) serve(t testing.TB) {
	t.Helper()
	testproc.Start(t, testproc.Spec{
		Prefix: "testgitea", Name: "gitea web", Bin: f.bin, Env: f.env(), LogPath: f.logPath,
		Args:  []string{"--config", f.conf, "--work-path", f.workDir, "web"},
		Ready: testproc.HTTPOK(f.URL + "/api/v1/version"),
		Poll:  100 * time.Millisecond, StartTimeout: startTimeout,
	})
}

func parseToken(out string) string {
	const marker = "Access token was successfully created..."
	for _, line := range strings.Split(out, "\n") {
		if _, tok, ok := strings.Cut(line, marker); ok {
			return strings.TrimSpace(tok)
		}
	}
	return ""
}

func randomHex(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("testgitea: random: %v", err)
	}
	return hex.EncodeToString(b)
}
