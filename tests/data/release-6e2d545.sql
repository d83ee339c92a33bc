-- The schema clusterchat 6e2d545 (the first release, before the durable log) made
-- with metadata.create_all on SQLite (sqlite3 .schema of a new database), and a
-- few rows as that release wrote them. Password of every user: secret.
CREATE TABLE users (
	id INTEGER NOT NULL, 
	name VARCHAR(64) NOT NULL, 
	password_hash VARCHAR(255) NOT NULL, 
	created_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (name)
);
CREATE TABLE chat_groups (
	id INTEGER NOT NULL, 
	name VARCHAR(64) NOT NULL, 
	description VARCHAR(256) NOT NULL, 
	created_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (name)
);
CREATE TABLE friends (
	user_id INTEGER NOT NULL, 
	friend_id INTEGER NOT NULL, 
	PRIMARY KEY (user_id, friend_id), 
	FOREIGN KEY(user_id) REFERENCES users (id), 
	FOREIGN KEY(friend_id) REFERENCES users (id)
);
CREATE TABLE group_members (
	group_id INTEGER NOT NULL, 
	user_id INTEGER NOT NULL, 
	role VARCHAR(16) NOT NULL, 
	PRIMARY KEY (group_id, user_id), 
	FOREIGN KEY(group_id) REFERENCES chat_groups (id), 
	FOREIGN KEY(user_id) REFERENCES users (id)
);
CREATE INDEX ix_group_members_user ON group_members (user_id);
CREATE TABLE undelivered (
	seq INTEGER NOT NULL, 
	user_id INTEGER NOT NULL, 
	mid VARCHAR(64) NOT NULL, 
	payload BLOB NOT NULL, 
	created_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL, 
	PRIMARY KEY (seq), 
	FOREIGN KEY(user_id) REFERENCES users (id)
);
CREATE INDEX ix_undelivered_user_seq ON undelivered (user_id, seq);
INSERT INTO users (id, name, password_hash) VALUES (1, 'alice', '$argon2id$v=19$m=1024,t=1,p=4$TTfNuenXHiqTnXeTlShzCg$fpF3NjTQa9NvYPwe8jSLYX0GgGZFrMBrAZT17t+YLCI'), (2, 'bob', '$argon2id$v=19$m=1024,t=1,p=4$TTfNuenXHiqTnXeTlShzCg$fpF3NjTQa9NvYPwe8jSLYX0GgGZFrMBrAZT17t+YLCI');
INSERT INTO friends VALUES (1, 2), (2, 1);
INSERT INTO undelivered (user_id, mid, payload) VALUES
  (2, 'm-1', CAST('{"id":1,"mid":"m-1","msg":"stored in the first release","msgid":6,"name":"alice","time":"2026-11-25 10:00:00","toid":2}' AS BLOB));
