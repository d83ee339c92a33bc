-- A database of the original C++ ChatServer, in the shape of the course's
-- chat.sql dump (MySQL 5.7; described in ../shared/CLASSIC-SCHEMA.md), with its
-- sample data. Written for these tests from that description.

SET NAMES utf8;

CREATE TABLE `user` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `name` varchar(50) DEFAULT NULL,
  `password` varchar(50) DEFAULT NULL,
  `state` enum('online','offline') CHARACTER SET latin1 DEFAULT 'offline',
  PRIMARY KEY (`id`),
  UNIQUE KEY `name` (`name`)
) ENGINE=InnoDB AUTO_INCREMENT=22 DEFAULT CHARSET=utf8;

CREATE TABLE `friend` (
  `userid` int(11) NOT NULL,
  `friendid` int(11) NOT NULL,
  KEY `userid` (`userid`,`friendid`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8;

CREATE TABLE `allgroup` (
  `id` int(11) NOT NULL AUTO_INCREMENT,
  `groupname` varchar(50) CHARACTER SET latin1 NOT NULL,
  `groupdesc` varchar(200) CHARACTER SET latin1 DEFAULT '',
  PRIMARY KEY (`id`),
  UNIQUE KEY `groupname` (`groupname`)
) ENGINE=InnoDB AUTO_INCREMENT=2 DEFAULT CHARSET=utf8;

CREATE TABLE `groupuser` (
  `groupid` int(11) NOT NULL,
  `userid` int(11) NOT NULL,
  `grouprole` enum('creator','normal') CHARACTER SET latin1 DEFAULT NULL,
  KEY `groupid` (`groupid`,`userid`)
) ENGINE=InnoDB DEFAULT CHARSET=utf8;

CREATE TABLE `offlinemessage` (
  `userid` int(11) NOT NULL,
  `message` varchar(500) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=latin1;

INSERT INTO `user` VALUES
  (13,'zhang san','123456','online'),
  (15,'li si','666666','offline'),
  (16,'liu shuo','123456','offline'),
  (18,'wu yang','123456','offline'),
  (19,'pi pi','123456','offline'),
  (21,'gao yang','123456','online');

INSERT INTO `friend` VALUES (13,15),(13,21),(21,13),(21,15);

INSERT INTO `allgroup` VALUES (1,'C++ chat project','start develop a chat project');

INSERT INTO `groupuser` VALUES (1,13,'creator'),(1,21,'normal'),(1,19,'normal');

INSERT INTO `offlinemessage` VALUES
  (19,'{"groupid":1,"id":21,"msg":"hello","msgid":10,"name":"gao yang","time":"2020-02-22 00:43:59"}'),
  (19,'{"groupid":1,"id":21,"msg":"hello!!!","msgid":10,"name":"gao yang","time":"2020-02-22 00:44:28"}'),
  (19,'{"groupid":1,"id":13,"msg":"hahahahaha","msgid":10,"name":"zhang san","time":"2020-02-22 00:44:40"}'),
  (19,'{"groupid":1,"id":13,"msg":"hahahahaha","msgid":10,"name":"zhang san","time":"2020-02-22 00:44:48"}'),
  (19,'{"groupid":1,"id":21,"msg":"wowowowo","msgid":10,"name":"gao yang","time":"2020-02-22 00:44:55"}');
