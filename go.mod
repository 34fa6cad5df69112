module github.com/wsroom/wsroom

go 1.25
