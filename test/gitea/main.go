// Command gitea is Gitea's own CLI, built from its Go module at the version
// pinned in go.mod, so integration tests run against a real forge without a
// container or a downloaded release. It mirrors Gitea's main.go.
package main

import (
	"os"
	"runtime"
	"time"

	"code.gitea.io/gitea/cmd"
	"code.gitea.io/gitea/modules/log"
	"code.gitea.io/gitea/modules/setting"

	// Gitea's main.go registers these renderers; the forge should render
	// READMEs the same way the released binary does.
	_ "code.gitea.io/gitea/modules/markup/asciicast"
	_ "code.gitea.io/gitea/modules/markup/console"
	_ "code.gitea.io/gitea/modules/markup/csv"
	_ "code.gitea.io/gitea/modules/markup/markdown"
	_ "code.gitea.io/gitea/modules/markup/orgmode"

	"github.com/urfave/cli/v3"
)

// Version is what the API reports (/api/v1/version); scripts/gitea.sh sets it
// with -ldflags so version checks in the runner see the real release.
var Version = "1.26.4"

func init() {
	setting.AppVer = Version
	setting.AppBuiltWith = " built with " + runtime.Version()
	setting.AppStartTime = time.Now().UTC()
}

func main() {
	cli.OsExiter = func(code int) {
		log.GetManager().Close()
		os.Exit(code)
	}
	app := cmd.NewMainApp(cmd.AppVersion{Version: Version, Extra: setting.AppBuiltWith})
	_ = cmd.RunMainApp(app, os.Args...) // RunMainApp reports its own errors
	// Flush queued logs before exiting, as Gitea's main.go does, or the tail is lost.
	log.GetManager().Close()
}
