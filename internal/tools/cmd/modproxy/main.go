// Command modproxy writes a file-based Go module proxy (for
// GOPROXY=file:///DIR) holding modules of this repository at given commits,
// so that builds and release checks can use versions that are not tagged or
// published yet.
//
// It reads lines "DIR VERSION REV" from standard input (blank lines and
// lines starting with # are ignored): the module whose go.mod is DIR/go.mod
// at commit REV is written as version VERSION. The zip is made the way the
// go command makes it from a tag (from git archive, with
// golang.org/x/mod/zip), so its h1: hash is the one that the module proxy and
// checksum database will have once REV is tagged VERSION.
//
//	modproxy -out DIR [-repo REPO] < release-pins.txt
package main

import (
	"archive/zip"
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/mod/modfile"
	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"
	"golang.org/x/mod/sumdb/dirhash"
	modzip "golang.org/x/mod/zip"
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("modproxy: ")
	out := flag.String("out", "", "proxy directory to write (created if missing)")
	repo := flag.String("repo", ".", "root of the git repository")
	flag.Parse()
	if *out == "" || flag.NArg() != 0 {
		log.Fatal("usage: modproxy -out DIR [-repo REPO] < specs (lines: DIR VERSION REV)")
	}
	root, err := gitOutput(*repo, "rev-parse", "--show-toplevel")
	if err != nil {
		log.Fatal(err)
	}
	sc := bufio.NewScanner(os.Stdin)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 {
			log.Fatalf("line %d: want DIR VERSION REV, have %q", n, line)
		}
		m, err := write(*out, root, f[0], f[1], f[2])
		if err != nil {
			log.Fatalf("line %d: %v", n, err)
		}
		fmt.Printf("%s@%s\n", m.Path, m.Version)
	}
	if err := sc.Err(); err != nil {
		log.Fatal(err)
	}
}

// write adds the module in dir at rev to the proxy in out as version.
func write(out, root, dir, version, rev string) (module.Version, error) {
	dir = path.Clean(dir)
	subdir := dir
	if dir == "." {
		subdir = ""
	}
	if !semver.IsValid(version) || semver.Canonical(version) != version {
		return module.Version{}, fmt.Errorf("%s: not a canonical semantic version", version)
	}
	commit, err := gitOutput(root, "rev-parse", "--verify", rev+"^{commit}")
	if err != nil {
		return module.Version{}, fmt.Errorf("commit %s: %v (a shallow clone? fetch the full history)", rev, err)
	}
	// The proxy serves go.mod byte for byte as it is in the commit: its
	// hash is in the go.sum of every module that requires this one.
	gomod, err := git(root, "show", commit+":"+path.Join(dir, "go.mod"))
	if err != nil {
		return module.Version{}, fmt.Errorf("%s/go.mod at %s: %v", dir, rev, err)
	}
	m := module.Version{Path: modfile.ModulePath(gomod), Version: version}
	if m.Path == "" {
		return m, fmt.Errorf("%s/go.mod at %s has no module line", dir, rev)
	}
	if err := module.Check(m.Path, m.Version); err != nil {
		return m, err
	}
	when, err := gitOutput(root, "show", "-s", "--format=%cI", commit)
	if err != nil {
		return m, err
	}
	t, err := time.Parse(time.RFC3339, when)
	if err != nil {
		return m, err
	}

	esc, err := module.EscapePath(m.Path)
	if err != nil {
		return m, err
	}
	vdir := filepath.Join(out, filepath.FromSlash(esc), "@v")
	if err := os.MkdirAll(vdir, 0o755); err != nil {
		return m, err
	}
	files, err := filesAt(root, commit, subdir)
	if err != nil {
		return m, err
	}
	var zip bytes.Buffer
	if err := modzip.Create(&zip, m, files); err != nil {
		return m, err
	}
	if err := checkCache(m, zip.Bytes()); err != nil {
		return m, err
	}
	info, err := json.Marshal(struct {
		Version string
		Time    string
	}{version, t.UTC().Format(time.RFC3339)})
	if err != nil {
		return m, err
	}
	for ext, data := range map[string][]byte{".zip": zip.Bytes(), ".mod": gomod, ".info": info} {
		if err := writeFile(filepath.Join(vdir, version+ext), data); err != nil {
			return m, err
		}
	}
	return m, addToList(filepath.Join(vdir, "list"), version)
}

// filesAt lists the files of subdir at commit as the go command sees them
// when it makes a module zip from a tag: what git archive gives, plus the
// LICENSE of the repository's root for a module in a subdirectory that has
// none of its own. (modzip.Create then leaves out nested modules, vendor
// directories and the like.) It is modzip.CreateFromVCS without its
// requirement that root/.git be the repository, which fails in a git
// worktree.
func filesAt(root, commit, subdir string) ([]modzip.File, error) {
	args := []string{"-c", "core.autocrlf=input", "-c", "core.eol=lf", "archive", "--format=zip", commit}
	if subdir != "" {
		args = append(args, subdir)
	}
	data, err := git(root, args...)
	if err != nil {
		return nil, err
	}
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return nil, err
	}
	var files []modzip.File
	haveLicense := false
	for _, zf := range zr.File {
		if !strings.HasPrefix(zf.Name, subdir) || strings.HasSuffix(zf.Name, "/") {
			continue
		}
		name := strings.TrimPrefix(strings.TrimPrefix(zf.Name, subdir), "/")
		if name == "" {
			continue
		}
		files = append(files, zipFile{name, zf})
		haveLicense = haveLicense || name == "LICENSE"
	}
	if !haveLicense && subdir != "" {
		if data, err := git(root, "cat-file", "blob", commit+":LICENSE"); err == nil {
			files = append(files, dataFile{"LICENSE", data})
		}
	}
	return files, nil
}

type zipFile struct {
	name string
	f    *zip.File
}

func (f zipFile) Path() string                 { return f.name }
func (f zipFile) Lstat() (os.FileInfo, error)  { return f.f.FileInfo(), nil }
func (f zipFile) Open() (io.ReadCloser, error) { return f.f.Open() }

type dataFile struct {
	name string
	data []byte
}

func (f dataFile) Path() string                 { return f.name }
func (f dataFile) Lstat() (os.FileInfo, error)  { return dataFileInfo{f}, nil }
func (f dataFile) Open() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(f.data)), nil }

type dataFileInfo struct{ f dataFile }

func (fi dataFileInfo) Name() string       { return path.Base(fi.f.name) }
func (fi dataFileInfo) Size() int64        { return int64(len(fi.f.data)) }
func (fi dataFileInfo) Mode() os.FileMode  { return 0o644 }
func (fi dataFileInfo) ModTime() time.Time { return time.Time{} }
func (fi dataFileInfo) IsDir() bool        { return false }
func (fi dataFileInfo) Sys() any           { return nil }

// checkCache fails if the module cache already holds m with other
// contents. The go command never fetches a version again once it is in the
// cache, so a version must not be written from another commit: builds here
// would go on using the old contents, and go.sum files would record their
// hash, while other machines fetch the new ones.
func checkCache(m module.Version, zipData []byte) error {
	cache, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil || len(bytes.TrimSpace(cache)) == 0 {
		return nil // no module cache to disagree with
	}
	esc, err := module.EscapePath(m.Path)
	if err != nil {
		return err
	}
	cached, err := os.ReadFile(filepath.Join(string(bytes.TrimSpace(cache)), "cache", "download", filepath.FromSlash(esc), "@v", m.Version+".ziphash"))
	if err != nil {
		return nil // not in the cache
	}
	f, err := os.CreateTemp("", "modproxy-*.zip")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	_, err = f.Write(zipData)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	sum, err := dirhash.HashZip(f.Name(), dirhash.Hash1)
	if err != nil {
		return err
	}
	if have := strings.TrimSpace(string(cached)); have != sum {
		dir := filepath.Join(string(bytes.TrimSpace(cache)), "cache", "download", filepath.FromSlash(esc), "@v")
		return fmt.Errorf("%s@%s is in the module cache with other contents than release-pins.txt gives it (cached %s, pinned %s): "+
			"the cache holds an earlier build of this unreleased version. Remove it, then run the command again:\n"+
			"\tchmod -R u+w %[5]s %[7]s; rm -f %[6]s.* && rm -rf %[7]s\n"+
			"(or clear the whole module cache: go clean -modcache). Maintainers: a released version must never move; pin a new one (RELEASING.md)",
			m.Path, m.Version, have, sum,
			dir, filepath.Join(dir, m.Version), filepath.Join(string(bytes.TrimSpace(cache)), filepath.FromSlash(esc)+"@"+m.Version))
	}
	return nil
}

// addToList adds version to the proxy's list file of a module, in order.
func addToList(name, version string) error {
	var versions []string
	data, err := os.ReadFile(name)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	versions = strings.Fields(string(data))
	if !slices.Contains(versions, version) {
		versions = append(versions, version)
	}
	semver.Sort(versions)
	return writeFile(name, []byte(strings.Join(versions, "\n")+"\n"))
}

// writeFile replaces name atomically, so a concurrent reader of the proxy
// never sees half a file.
func writeFile(name string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(name), ".tmp-*")
	if err != nil {
		return err
	}
	_, err = io.Copy(f, bytes.NewReader(data))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(f.Name(), name)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

// git runs git in dir and returns its standard output.
func git(dir string, args ...string) ([]byte, error) {
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("git %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// gitOutput is git with its output as a string, without the final newline.
func gitOutput(dir string, args ...string) (string, error) {
	out, err := git(dir, args...)
	return strings.TrimSpace(string(out)), err
}
