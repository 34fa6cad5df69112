package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"
)

// Shared files travel over plain HTTP: the page uploads the bytes with a
// POST, then sends the room a small {"type":"file","id":...} message, which
// the server turns into a link. The bytes never pass through the room.

// FileInfo describes a shared file.
type FileInfo struct {
	ID   string    `json:"id"`   // random, the file's address
	Room string    `json:"room"` // the room it was shared in
	Name string    `json:"name"` // file name, cleaned
	MIME string    `json:"mime"` // the type it is served with
	Size int64     `json:"size"`
	Time time.Time `json:"time"`
}

// FileStore keeps shared files.
type FileStore interface {
	Save(info FileInfo, data []byte) error
	Stat(id string) (FileInfo, error)
	Open(id string) (FileInfo, io.ReadSeekCloser, error)
}

var errNoFile = errors.New("no such file")

var fileIDEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// newFileID returns a random identifier of 32 characters (160 bits): the
// link to a file is its only key.
func newFileID() string {
	var b [20]byte
	rand.Read(b[:])
	return fileIDEncoding.EncodeToString(b[:])
}

func validFileID(id string) bool {
	if len(id) != 32 {
		return false
	}
	for _, c := range []byte(id) {
		if !('a' <= c && c <= 'z' || '2' <= c && c <= '7') {
			return false
		}
	}
	return true
}

// inlineTypes are the only types shown in the page and served inline.
var inlineTypes = map[string]bool{
	"image/png":  true,
	"image/jpeg": true,
	"image/gif":  true,
	"image/webp": true,
}

// passiveTypes are served with their own type, as downloads. Anything else
// (HTML, SVG, XML, scripts...) is served as application/octet-stream.
var passiveTypes = map[string]bool{
	"text/plain; charset=utf-8":    true,
	"text/plain; charset=utf-16be": true,
	"text/plain; charset=utf-16le": true,
	"application/pdf":              true,
	"application/zip":              true,
	"application/x-gzip":           true,
	"image/bmp":                    true,
	"audio/mpeg":                   true,
	"audio/wave":                   true,
	"audio/ogg":                    true,
	"video/mp4":                    true,
	"video/webm":                   true,
	"application/ogg":              true,
}

// fileType is the type a file is served with, sniffed from its content:
// what the uploader claims is ignored.
func fileType(data []byte) string {
	t := http.DetectContentType(data)
	if inlineTypes[t] || passiveTypes[t] {
		return t
	}
	return "application/octet-stream"
}

// cleanFilename keeps the last element of a file name, without control
// characters, at most 100 characters long.
func cleanFilename(name string) string {
	name = strings.ReplaceAll(name, "\\", "/")
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		name = name[i+1:]
	}
	name = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == utf8.RuneError {
			return -1
		}
		return r
	}, name)
	name = strings.TrimSpace(name)
	if r := []rune(name); len(r) > 100 {
		name = string(r[len(r)-100:])
	}
	if name == "" || name == "." || name == ".." {
		name = "file"
	}
	return name
}

// serveUpload stores the request body as a file shared in a room:
// POST /api/rooms/{room}/files?filename=F&name=N&key=K&token=T. The sender
// must be in the room (name and key of a connected tab). It answers 201 with
// the FileInfo, or an error object: 413 beyond MaxUpload.
func (s *Server) serveUpload(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	room := r.PathValue("room")
	if !s.tokenOK(q.Get("token")) {
		writeError(w, http.StatusUnauthorized, "token", "wrong or missing token")
		return
	}
	if !s.memberByKey(room, q.Get("name"), q.Get("key")) {
		writeError(w, http.StatusForbidden, "", "join the room before sharing a file")
		return
	}
	tooLarge := fmt.Sprintf("the file is too large: the limit is %d MiB", MaxUpload>>20)
	if r.ContentLength > MaxUpload {
		writeError(w, http.StatusRequestEntityTooLarge, "file", tooLarge)
		return
	}
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxUpload))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, "file", tooLarge)
		return
	case err != nil:
		writeError(w, http.StatusBadRequest, "file", "upload failed: "+err.Error())
		return
	case len(data) == 0:
		writeError(w, http.StatusBadRequest, "file", "the file is empty")
		return
	}
	info := FileInfo{
		ID:   newFileID(),
		Room: room,
		Name: cleanFilename(q.Get("filename")),
		MIME: fileType(data),
		Size: int64(len(data)),
		Time: time.Now().UTC().Truncate(time.Second),
	}
	if err := s.files.Save(info, data); err != nil {
		s.opts.Logger.Error("chat: save file", "err", err)
		writeError(w, http.StatusInsufficientStorage, "file", "the server could not store the file")
		return
	}
	writeJSON(w, http.StatusCreated, info)
}

// serveFile serves a shared file. Only the image types of inlineTypes are
// shown inline; everything else is a download. nosniff and a sandboxing CSP
// make sure no upload ever runs as a page.
func (s *Server) serveFile(w http.ResponseWriter, r *http.Request) {
	info, f, err := s.files.Open(r.PathValue("id"))
	if err != nil {
		http.Error(w, "no such file", http.StatusNotFound)
		return
	}
	defer f.Close()
	disposition := "attachment"
	if inlineTypes[info.MIME] {
		disposition = "inline"
	}
	h := w.Header()
	h.Set("Content-Type", info.MIME)
	if cd := mime.FormatMediaType(disposition, map[string]string{"filename": info.Name}); cd != "" {
		h.Set("Content-Disposition", cd)
	} else {
		h.Set("Content-Disposition", disposition)
	}
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", "default-src 'none'; sandbox")
	h.Set("Cache-Control", "private, max-age=86400")
	http.ServeContent(w, r, "", info.Time, f)
}

// diskFiles keeps files in a directory: ID holds the bytes, ID.json the
// FileInfo.
type diskFiles struct{ dir string }

func newDiskFiles(dir string) (*diskFiles, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("files directory: %w", err)
	}
	return &diskFiles{dir: dir}, nil
}

func (d *diskFiles) Save(info FileInfo, data []byte) error {
	if !validFileID(info.ID) {
		return errNoFile
	}
	meta, err := json.Marshal(info)
	if err != nil {
		return err
	}
	path := filepath.Join(d.dir, info.ID)
	if err := os.WriteFile(path, data, 0o640); err != nil {
		return err
	}
	// The metadata goes last: a file without it does not exist.
	tmp := path + ".json.tmp"
	if err := os.WriteFile(tmp, meta, 0o640); err != nil {
		return err
	}
	return os.Rename(tmp, path+".json")
}

func (d *diskFiles) Stat(id string) (FileInfo, error) {
	if !validFileID(id) {
		return FileInfo{}, errNoFile
	}
	b, err := os.ReadFile(filepath.Join(d.dir, id+".json"))
	if err != nil {
		return FileInfo{}, errNoFile
	}
	var info FileInfo
	if err := json.Unmarshal(b, &info); err != nil || info.ID != id {
		return FileInfo{}, errNoFile
	}
	return info, nil
}

func (d *diskFiles) Open(id string) (FileInfo, io.ReadSeekCloser, error) {
	info, err := d.Stat(id)
	if err != nil {
		return FileInfo{}, nil, err
	}
	f, err := os.Open(filepath.Join(d.dir, id))
	if err != nil {
		return FileInfo{}, nil, errNoFile
	}
	return info, f, nil
}

// memoryFiles keeps files in memory, at most max bytes in all; the oldest
// go first to make room.
type memoryFiles struct {
	max int64

	mu    sync.Mutex
	files map[string]memoryFile
	order []string // oldest first
	total int64
}

type memoryFile struct {
	info FileInfo
	data []byte
}

func newMemoryFiles(max int64) *memoryFiles {
	return &memoryFiles{max: max, files: make(map[string]memoryFile)}
}

func (m *memoryFiles) Save(info FileInfo, data []byte) error {
	if int64(len(data)) > m.max {
		return errors.New("file larger than the memory store")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for m.total+int64(len(data)) > m.max {
		old := m.order[0]
		m.order = m.order[1:]
		m.total -= int64(len(m.files[old].data))
		delete(m.files, old)
	}
	m.files[info.ID] = memoryFile{info: info, data: data}
	m.order = append(m.order, info.ID)
	m.total += int64(len(data))
	return nil
}

func (m *memoryFiles) Stat(id string) (FileInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f, ok := m.files[id]
	if !ok {
		return FileInfo{}, errNoFile
	}
	return f.info, nil
}

func (m *memoryFiles) Open(id string) (FileInfo, io.ReadSeekCloser, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f, ok := m.files[id]
	if !ok {
		return FileInfo{}, nil, errNoFile
	}
	return f.info, nopCloser{bytes.NewReader(f.data)}, nil
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }
